//! Leases and the delivery queue's steps on both stores: read, stage,
//! complete, discard, kill, dead letters and replay.

use std::time::{Duration, Instant};

use occupancy::integrations::limits;
use occupancy::integrations::store::SourceEvent;
use occupancy::integrations::{DeadLetter, Entry, Staged};

use super::{all, done, ev, ints, letter, metrics, rule, rule_ref, seen, TTL};
use crate::support::{eventually, Harness};

all_stores!(leases, lease_expiry, queue_steps, dead_letters_keep_the_newest);

async fn leases(h: Harness) {
    let (s, other) = (ints(&h), ints(&h));
    let long = Duration::from_secs(60);
    assert!(s.lease("rule_a", "w1", long).await.unwrap());
    assert!(!other.lease("rule_a", "w2", long).await.unwrap(), "held by w1");
    assert!(s.lease("rule_a", "w1", long).await.unwrap(), "renewed by its holder");
    assert!(other.lease("rule_b", "w2", long).await.unwrap(), "leases are per rule");
    other.release("rule_a", "w2").await.unwrap();
    assert!(
        !other.lease("rule_a", "w2", long).await.unwrap(),
        "only the holder releases"
    );
    s.release("rule_a", "w1").await.unwrap();
    assert!(other.lease("rule_a", "w2", long).await.unwrap(), "released");
    assert!(!s.lease("rule_a", "w1", long).await.unwrap());
}

async fn lease_expiry(h: Harness) {
    let (s, other) = (ints(&h), ints(&h));
    let short = Duration::from_millis(300);
    let started = Instant::now();
    assert!(s.lease("rule_a", "w1", short).await.unwrap());
    assert!(!other.lease("rule_a", "w2", short).await.unwrap());
    // a renewal extends it: after the first lease's end it still holds
    assert!(s.lease("rule_a", "w1", Duration::from_secs(60)).await.unwrap());
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert!(!other.lease("rule_a", "w2", short).await.unwrap(), "renewed for 60 s");
    // an expired lease lets another holder in
    let started_b = Instant::now();
    assert!(s.lease("rule_b", "w1", short).await.unwrap());
    eventually(Duration::from_secs(5), "the lease to expire", || {
        let other = other.clone();
        async move { other.lease("rule_b", "w2", short).await.unwrap().then_some(()) }
    })
    .await;
    assert!(started_b.elapsed() >= Duration::from_millis(250), "not before its end");
    assert!(!s.lease("rule_b", "w1", short).await.unwrap(), "now w2's");
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn queue_steps(h: Harness) {
    let (s, other) = (ints(&h), ints(&h));
    let a = rule(&["channel.occupancy"], &[]);
    s.put_rule(&a, true).await.unwrap();
    let events: Vec<SourceEvent> = (0..10)
        .map(|i| ev(&format!("{}-0", i + 1), &format!("ch{i}"), metrics(1, 0, 0), &[0]))
        .collect();
    assert_eq!(s.enqueue(1, 0, &[rule_ref(&a)], &events).await.unwrap(), done(10));
    let q = all(&*s, &a.id).await;
    let names = |entries: &[Entry]| entries.iter().map(|e| e.channel.clone()).collect::<Vec<_>>();
    assert_eq!(names(&q), (0..10).map(|i| format!("ch{i}")).collect::<Vec<_>>());
    // read: in order, from after an entry, up to a limit
    assert_eq!(s.read(&a.id, None, 3).await.unwrap(), q[..3]);
    assert_eq!(other.read(&a.id, Some(&q[2].id), 3).await.unwrap(), q[3..6]);
    assert!(s.read(&a.id, Some(&q[9].id), 10).await.unwrap().is_empty());
    assert!(s.read(&a.id, None, 0).await.unwrap().is_empty());
    assert_eq!(
        s.read(&a.id, Some("not a position"), 2).await.unwrap(),
        q[..2],
        "read from the start"
    );
    assert!(s.read("rule_none", None, 10).await.unwrap().is_empty());

    // staged: oldest first by their entries, not by their ids
    let batch = |id: &str, entries: &[Entry]| Staged {
        id: id.into(),
        entries: entries.to_vec(),
    };
    let (z, y) = (batch("batch-z", &q[0..2]), batch("batch-y", &q[3..5]));
    s.stage(&a.id, &y).await.unwrap();
    s.stage(&a.id, &z).await.unwrap();
    assert_eq!(other.staged(&a.id).await.unwrap(), [z.clone(), y.clone()]);
    assert_eq!(s.backlog(&a.id).await.unwrap(), 10, "staged entries stay queued");

    // complete: the entries and the stage go
    s.complete(&a.id, &z, false).await.unwrap();
    assert_eq!(s.backlog(&a.id).await.unwrap(), 8);
    assert_eq!(s.staged(&a.id).await.unwrap(), std::slice::from_ref(&y));
    assert_eq!(s.read(&a.id, None, 1).await.unwrap(), q[2..3]);
    // discard: ids that are no position are ignored
    s.discard(&a.id, &[q[5].id.clone(), "junk".into()]).await.unwrap();
    s.discard(&a.id, &[]).await.unwrap();
    assert_eq!(s.backlog(&a.id).await.unwrap(), 7);

    // kill: out of the queue and the stage, into the dead letters
    let dead_y = letter("batch-y", y.entries.clone());
    s.kill(&a.id, &dead_y).await.unwrap();
    let x = batch("batch-x", &q[6..8]);
    s.stage(&a.id, &x).await.unwrap();
    let dead_x = letter("batch-x", x.entries.clone());
    other.kill(&a.id, &dead_x).await.unwrap();
    assert!(s.staged(&a.id).await.unwrap().is_empty());
    assert_eq!(names(&all(&*s, &a.id).await), ["ch2", "ch8", "ch9"]);
    assert_eq!(s.backlog(&a.id).await.unwrap(), 3);
    assert_eq!(
        s.dead_letters(&a.id, 10).await.unwrap(),
        [dead_y.clone(), dead_x.clone()]
    );
    assert_eq!(s.dead_letters(&a.id, 1).await.unwrap(), std::slice::from_ref(&dead_y));
    assert!(s.dead_letters(&a.id, 0).await.unwrap().is_empty());

    // replay by name: at the queue's end, with new ids
    assert_eq!(
        s.replay(&a.id, &["batch-x".into(), "batch-unknown".into()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.dead_letters(&a.id, 10).await.unwrap(), std::slice::from_ref(&dead_y));
    let after = all(&*s, &a.id).await;
    assert_eq!(names(&after), ["ch2", "ch8", "ch9", "ch6", "ch7"]);
    assert_eq!(seen(&after[3..]), seen(&x.entries));
    assert!(
        after.windows(2).all(|w| w[0].pos() < w[1].pos()),
        "ids increase: {after:?}"
    );
    // replay of every letter
    assert_eq!(other.replay(&a.id, &[]).await.unwrap(), 2);
    assert!(s.dead_letters(&a.id, 10).await.unwrap().is_empty());
    assert_eq!(s.replay(&a.id, &[]).await.unwrap(), 0);
    let end = all(&*s, &a.id).await;
    assert_eq!(names(&end), ["ch2", "ch8", "ch9", "ch6", "ch7", "ch3", "ch4"]);
    assert_eq!(seen(&end[5..]), seen(&y.entries));
    assert_eq!(s.backlog(&a.id).await.unwrap(), 7);
    // reading on from an entry that has gone still works
    assert_eq!(names(&s.read(&a.id, Some(&q[7].id), 2).await.unwrap()), ["ch8", "ch9"]);

    // a batch at the queue's front completes by trimming up to its end:
    // the entries before it that were already gone stay gone, the ones
    // after it stay
    let front = batch("batch-front", &end[0..3]);
    s.stage(&a.id, &front).await.unwrap();
    other.complete(&a.id, &front, true).await.unwrap();
    assert_eq!(names(&all(&*s, &a.id).await), ["ch6", "ch7", "ch3", "ch4"]);
    assert_eq!(s.backlog(&a.id).await.unwrap(), 4);
    assert!(s.staged(&a.id).await.unwrap().is_empty());
}

async fn dead_letters_keep_the_newest(h: Harness) {
    let s = ints(&h);
    let a = rule(&["channel.occupancy"], &[]);
    s.put_rule(&a, true).await.unwrap();
    let extra = 3;
    let started = Instant::now();
    for i in 0..limits::MAX_DEAD_LETTERS + extra {
        s.kill(&a.id, &letter(&format!("d{i}"), Vec::new())).await.unwrap();
    }
    eprintln!(
        "{} kills took {:?}",
        limits::MAX_DEAD_LETTERS + extra,
        started.elapsed()
    );
    let kept = s.dead_letters(&a.id, usize::MAX).await.unwrap();
    assert_eq!(kept.len(), limits::MAX_DEAD_LETTERS);
    assert_eq!(kept[0].batch.id, format!("d{extra}"), "the oldest went");
    assert_eq!(
        kept.last().unwrap().batch.id,
        format!("d{}", limits::MAX_DEAD_LETTERS + extra - 1)
    );
    let page = s.dead_letters(&a.id, limits::MAX_DEAD_LETTER_PAGE).await.unwrap();
    assert_eq!(page[..], kept[..limits::MAX_DEAD_LETTER_PAGE]);
    // replaying a few from the middle keeps the others' order
    let pick = vec!["d100".to_string(), "d5000".to_string()];
    assert_eq!(s.replay(&a.id, &pick).await.unwrap(), 0, "letters without entries");
    let rest = s.dead_letters(&a.id, usize::MAX).await.unwrap();
    assert_eq!(rest.len(), limits::MAX_DEAD_LETTERS - 2);
    let want: Vec<&DeadLetter> = kept.iter().filter(|d| !pick.contains(&d.batch.id)).collect();
    assert!(rest.iter().eq(want));
}
