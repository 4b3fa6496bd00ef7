#!/usr/bin/env node
// A command-line client of the occupancy service, with @grpc/grpc-js.
//
// The proto (proto/occupancy/v1/occupancy.proto in this repository) is loaded
// at run time with @grpc/proto-loader, so no generated code is kept. Every
// result is printed as one JSON object per line, with the proto's JSON
// (camelCase, Ably-style) field names:
//
//   get CHANNEL...                   ChannelDetails of each channel
//   list [--prefix P] [--limit N]    ChannelDetails of every active channel,
//                                    following nextCursor to the last page
//   subscribe CHANNEL... [--prefix P] [--count N]
//                                    occupancy events (the snapshot first,
//                                    then every change); exits after N events
//   front-end SESSION CONNECTION CHANNEL...
//                                    a front end following the session rule
//                                    (FrontEnd below): attaches CONNECTION to
//                                    each CHANNEL, then sends a KeepAlive per
//                                    line read from stdin, and closes the
//                                    session at the end of stdin
//
// Usage: node occupancy-client.js [--endpoint HOST:PORT] COMMAND ...
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_FILE = 'occupancy/v1/occupancy.proto';
const DEFAULT_PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
// Deadline of each unary call, in milliseconds.
const CALL_TIMEOUT_MS = 30000;

const USAGE = `usage: node occupancy-client.js [--endpoint HOST:PORT] [--proto-root DIR] COMMAND ...

commands:
  get CHANNEL...                                 occupancy of channels
  list [--prefix P] [--limit N]                  every active channel, all pages
  subscribe [CHANNEL...] [--prefix P] [--count N]
                                                 stream occupancy events; exit after N
  front-end SESSION CONNECTION CHANNEL...        a front end following the session rule:
                                                 attach, then a KeepAlive per stdin line

--endpoint defaults to 127.0.0.1:50051.`;

function fail(message) {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        endpoint: { type: 'string', default: '127.0.0.1:50051' },
        'proto-root': { type: 'string', default: DEFAULT_PROTO_ROOT },
        prefix: { type: 'string', default: '' },
        limit: { type: 'string', default: '0' },
        count: { type: 'string', default: '0' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (e) {
    fail(e.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const [command, ...channels] = positionals;
  const count = Number.parseInt(values.count, 10);
  const limit = Number.parseInt(values.limit, 10);
  if (!Number.isInteger(count) || count < 0) fail('--count must be a non-negative integer');
  if (!Number.isInteger(limit) || limit < 0) fail('--limit must be a non-negative integer');
  if (command === 'get' && channels.length === 0) fail('get needs at least one channel');
  if (command === 'list' && channels.length > 0) fail('list takes no channels (use --prefix)');
  if (command === 'subscribe' && channels.length === 0 && !values.prefix) {
    fail('subscribe needs channels, --prefix, or both');
  }
  if (command === 'front-end' && channels.length < 3) fail('front-end needs SESSION CONNECTION CHANNEL...');
  if (!['get', 'list', 'subscribe', 'front-end'].includes(command)) fail(`unknown command ${command ?? '(none)'}`);
  return {
    command,
    channels,
    endpoint: values.endpoint,
    protoRoot: values['proto-root'],
    prefix: values.prefix,
    limit,
    count,
  };
}

function loadService(protoRoot) {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [protoRoot],
    keepCase: false, // camelCase field names, as in the proto's JSON mapping
    longs: String, // int64 as a decimal string, as in the proto's JSON mapping
    enums: String,
    defaults: true, // zero-valued fields included
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).occupancy.v1;
}

// One JSON object per line. Unset message fields (null with `defaults`) are
// left out, as the proto's JSON mapping does.
function emit(message) {
  process.stdout.write(`${JSON.stringify(message, (_key, value) => (value === null ? undefined : value))}\n`);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

async function get(client, opts) {
  if (opts.channels.length === 1) {
    const response = await unary(client, 'getOccupancy', { channel: opts.channels[0] });
    emit(response.channel);
  } else {
    const response = await unary(client, 'batchGetOccupancy', { channels: opts.channels });
    response.channels.forEach(emit);
  }
}

async function list(client, opts) {
  let cursor = '';
  do {
    const page = await unary(client, 'listChannels', { prefix: opts.prefix, limit: opts.limit, cursor });
    page.channels.forEach(emit);
    cursor = page.nextCursor;
  } while (cursor);
}

function subscribe(client, opts) {
  return new Promise((resolve, reject) => {
    const call = client.subscribeOccupancy({ channels: opts.channels, prefix: opts.prefix });
    let seen = 0;
    let done = false;
    call.on('data', (response) => {
      // the stream also says when it is live and sends heartbeats while
      // quiet: only events are printed
      if (done || !response.event) return;
      emit(response.event);
      seen += 1;
      if (opts.count > 0 && seen >= opts.count) {
        done = true;
        call.cancel();
        resolve();
      }
    });
    call.on('error', (err) => {
      if (!done) {
        done = true;
        reject(err);
      }
    });
    call.on('end', () => {
      if (!done) {
        done = true;
        resolve();
      }
    });
  });
}

// The front-end side of a session, following the service's rule: keep what
// you hold, remember the lease epoch of your last SyncSession (or first
// answer), and when an answer carries another epoch (or KeepAlive says
// UNKNOWN) the session's state is gone: re-send all of it.
class FrontEnd {
  constructor(client, sessionId) {
    this.client = client;
    this.sessionId = sessionId;
    this.held = new Map(); // "connection\nchannel" -> {connectionId, channel, modes}
    this.epoch = '0'; // uint64 as a decimal string
  }

  // Applies the rule to an answer; true when it re-sent the state.
  async follow(epoch, unknown = false) {
    if (this.epoch === '0' && !unknown) {
      this.epoch = epoch;
      return false;
    }
    if (unknown || epoch !== this.epoch) {
      await this.sync();
      return true;
    }
    return false;
  }

  async sync() {
    const attachments = [...this.held.values()];
    const r = await unary(this.client, 'syncSession', { sessionId: this.sessionId, attachments });
    this.epoch = r.sessionEpoch;
  }

  async attach(connectionId, channel, modes) {
    this.held.set(`${connectionId}\n${channel}`, { connectionId, channel, modes });
    const r = await unary(this.client, 'attach', { sessionId: this.sessionId, connectionId, channel, modes });
    return this.follow(r.sessionEpoch);
  }

  async keepAlive() {
    const r = await unary(this.client, 'keepAlive', { sessionId: this.sessionId });
    const unknown = r.status === 'SESSION_STATUS_UNKNOWN' && this.epoch !== '0';
    return [r, await this.follow(r.sessionEpoch, unknown)];
  }

  close() {
    return unary(this.client, 'closeSession', { sessionId: this.sessionId });
  }
}

async function frontEnd(client, opts) {
  const [sessionId, connectionId, ...channels] = opts.channels;
  const fe = new FrontEnd(client, sessionId);
  for (const channel of channels) {
    const resynced = await fe.attach(connectionId, channel, ['MODE_SUBSCRIBE']);
    emit({ call: 'attach', channel, sessionEpoch: fe.epoch, resynced });
  }
  const lines = require('node:readline').createInterface({ input: process.stdin });
  for await (const _line of lines) {
    const [r, resynced] = await fe.keepAlive();
    emit({ call: 'keepAlive', status: r.status, sessionEpoch: fe.epoch, resynced });
  }
  await fe.close();
}

async function main() {
  // A closed pipe (`| head`) ends the output quietly.
  process.stdout.on('error', (err) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  const opts = parse(process.argv.slice(2));
  const v1 = loadService(opts.protoRoot);
  const service = opts.command === 'front-end' ? v1.ConnectionService : v1.OccupancyService;
  const client = new service(opts.endpoint, grpc.credentials.createInsecure());
  const command = { get, list, subscribe, 'front-end': frontEnd }[opts.command];
  try {
    await command(client, opts);
  } catch (err) {
    const code = err.code !== undefined ? grpc.status[err.code] : 'ERROR';
    process.stderr.write(`error: ${code}: ${err.details ?? err.message}\n`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();
