//! What a subscription writes and when: its channels and categories,
//! debouncing, the write queue, and the resume position each response
//! carries.

use std::cmp::Reverse;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Chan, Sub};
use crate::domain::events::shard_of;
use crate::domain::{Category, ChannelName, Metrics, Pos};
use crate::fanout::hub::{HubEvent, Registration};
use crate::fanout::wire::SubscribeOccupancyResponse;

impl Sub {
    pub(super) fn matches(&self, ch: &ChannelName) -> bool {
        self.spec.prefix.as_deref().is_some_and(|p| ch.as_str().starts_with(p)) || self.spec.channels.contains(ch)
    }

    pub(super) fn selected(&self) -> &[Category] {
        if self.spec.categories.is_empty() {
            &Category::ALL
        } else {
            &self.spec.categories
        }
    }

    pub(super) fn changed(&self, a: &Metrics, b: &Metrics) -> bool {
        self.selected().iter().any(|c| a.get(*c) != b.get(*c))
    }

    pub(super) fn flips(&self, a: &Metrics, b: &Metrics) -> bool {
        self.selected().iter().any(|c| (a.get(*c) == 0) != (b.get(*c) == 0))
    }

    /// The index of the channel's state, created on first sight.
    pub(super) fn slot(&mut self, ch: &ChannelName) -> usize {
        if let Some(&i) = self.chan_index.get(ch) {
            return i;
        }
        let i = self.chans.len();
        let shard = shard_of(ch.as_str(), self.shards);
        self.chans.push(Chan {
            name: ch.clone(),
            shard,
            latest_out: None,
            // not `seen`: a snapshot that listed channels page by page may
            // have missed one created meanwhile, whose change is then
            // before `seen` and still needed
            known: self.floor.get(shard as usize).copied().unwrap_or_default(),
            held: None,
            held_since: None,
            window_until: None,
        });
        self.chan_index.insert(ch.clone(), i);
        i
    }

    pub(super) fn mark_unsent(&mut self, shard: u32, pos: Pos) {
        *self.unsent[shard as usize].entry(pos).or_insert(0) += 1;
    }

    pub(super) fn clear_unsent(&mut self, shard: u32, pos: Pos) {
        let u = &mut self.unsent[shard as usize];
        if let Some(n) = u.get_mut(&pos) {
            *n -= 1;
            if *n == 0 {
                u.remove(&pos);
            }
        }
    }

    /// Drops the held change of channel `i`, if any.
    pub(super) fn drop_held(&mut self, i: usize) -> Option<Pos> {
        let c = &mut self.chans[i];
        let shard = c.shard;
        c.held = None;
        let since = c.held_since.take();
        if let Some(p) = since {
            self.clear_unsent(shard, p);
        }
        since
    }

    /// Queues `ev` (of channel `i`) for writing; `unsent` is the oldest
    /// change it covers.
    pub(super) fn enqueue(&mut self, i: usize, ev: Arc<HubEvent>, unsent: Pos) {
        let debounce = self.spec.debounce;
        let c = &mut self.chans[i];
        c.latest_out = Some(ev.metrics);
        c.window_until = (!debounce.is_zero()).then(|| Instant::now() + debounce);
        let shard = c.shard;
        self.mark_unsent(shard, unsent);
        self.ready.push_back((ev, unsent));
    }

    /// Takes a change of channel `i` into account: writes it now, holds it
    /// for the end of the debounce window, or drops it when the client's
    /// view already matches. `force` writes it in any case.
    pub(super) fn consider_at(&mut self, i: usize, ev: Arc<HubEvent>, force: bool) {
        let debounce = self.spec.debounce;
        let c = &self.chans[i];
        let reference = c.latest_out.unwrap_or_default();
        let never_sent = c.latest_out.is_none();
        let window_until = c.window_until;
        // a channel this subscription never wrote may be held by the client
        // in any state (after a resume), so its first change always goes
        if !force && !never_sent && !self.changed(&reference, &ev.metrics) {
            // back to what the client holds (for what it asked for)
            self.drop_held(i);
            return;
        }
        let immediate = force
            || debounce.is_zero()
            || never_sent
            || self.flips(&reference, &ev.metrics)
            || window_until.is_none_or(|w| Instant::now() >= w);
        if immediate {
            let since = self.drop_held(i).unwrap_or(ev.pos).min(ev.pos);
            self.enqueue(i, ev, since);
        } else {
            let c = &mut self.chans[i];
            let shard = c.shard;
            let first = c.held_since.is_none();
            if first {
                c.held_since = Some(ev.pos);
            }
            c.held = Some(ev.clone());
            if first {
                self.mark_unsent(shard, ev.pos);
                if let Some(w) = window_until {
                    self.timers.push(Reverse((w, ev.channel.clone())));
                }
            }
        }
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, ch))) = self.timers.pop() else {
                break;
            };
            let Some(&i) = self.chan_index.get(&ch) else { continue };
            let c = &mut self.chans[i];
            if let (Some(ev), Some(since)) = (c.held.take(), c.held_since.take()) {
                let shard = c.shard;
                self.clear_unsent(shard, since);
                self.enqueue(i, ev, since);
            }
        }
    }

    /// Moves everything in the inbox into the subscriber's state.
    pub(super) fn drain(&mut self, reg: &Registration) {
        // read the watermark first: every change it covers is already in
        // the inbox (or was taken before)
        let mut watermark = std::mem::take(&mut self.watermark_buf);
        self.hub.watermark_into(&mut watermark);
        let mut events = std::mem::take(&mut self.inbox_buf);
        reg.inbox.take_into(&mut events);
        for ev in events.drain(..) {
            if !self.matches(&ev.channel) {
                continue;
            }
            let i = self.slot(&ev.channel);
            let c = &mut self.chans[i];
            if ev.pos <= c.known {
                continue;
            }
            c.known = ev.pos;
            self.consider_at(i, ev, false);
        }
        self.inbox_buf = events;
        for (s, w) in self.seen.iter_mut().zip(&watermark) {
            *s = (*s).max(*w);
        }
        self.watermark_buf = watermark;
    }

    /// The resume token to hand out now, into `token_buf`.
    pub(super) fn fill_token(&mut self) {
        self.token_buf.clear();
        self.token_buf.extend(
            self.seen
                .iter()
                .zip(&self.unsent)
                .map(|(seen, unsent)| match unsent.keys().next() {
                    Some(first) => (*seen).min(first.pred()),
                    None => *seen,
                }),
        );
    }

    /// The next queued event as a response, if any (events leave in the
    /// order they were queued).
    pub(super) fn next_ready(&mut self) -> Option<SubscribeOccupancyResponse> {
        let (ev, unsent) = self.ready.pop_front()?;
        self.clear_unsent(ev.shard, unsent);
        self.fill_token();
        Some(self.encoder.response(ev.pos, &self.token_buf, &ev.body))
    }
}
