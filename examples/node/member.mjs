// member.mjs <role>: one replica of a scaled consumer of your own, sharing
// the bus's partitions with the other replicas of the same role as
// docs/contract.md ("A scaled consumer of your own") says: a durable
// consumer <role>-p<n> per partition n, on the partition's stream, filtered
// to calls.<n>.>, with a pinned priority group, so that the server gives
// each partition to one replica at a time and moves it to another when the
// pin lapses. Each message is acknowledged once handled.
//
// What it does with the calls: counts each participant's audio frames and
// prints one JSON line per call when the call ends (every socket that
// started has ended): {"member", "call", "frames", "partition"}, and
// "partial": true for a call taken over mid-way from a replica that had
// acknowledged its start (what a real service would read back from the
// stream, as audiofan's roles do).
//
// MEMBER names this replica (default: host and pid). MEMBERS and
// MEMBER_INDEX (as a StatefulSet's ordinal gives it) share the partitions
// out: a replica pulls its share (n mod MEMBERS = MEMBER_INDEX) at once and
// the others only after STANDBY_MS (3000), as a standby for a replica that
// is gone. NATS_URL as in tap.mjs.
//
//   MEMBERS=2 MEMBER_INDEX=0 node member.mjs talktime &
//   MEMBERS=2 MEMBER_INDEX=1 node member.mjs talktime &
import { hostname } from "node:os";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { decodeRaw, layout, connectOptions } from "./contract.mjs";

const role = process.argv[2];
if (!role || !/^[A-Za-z0-9_-]+$/.test(role)) {
  console.error("usage: node member.mjs <role>   (a name of letters, digits, - and _)");
  process.exit(2);
}
const member = process.env.MEMBER || `${hostname()}-${process.pid}`;
const members = Number(process.env.MEMBERS || 1);
const index = Number(process.env.MEMBER_INDEX || 0);
const standby = Number(process.env.STANDBY_MS || 3000);
const group = "members";
const log = (msg, extra = {}) => console.error(JSON.stringify({ member, msg, ...extra }));

const nc = await connect(connectOptions());
const jsm = await jetstreamManager(nc);
const js = jetstream(nc);
const { partitions, prefix } = await layout(jsm);

// The consumer of partition n: created by whichever replica comes first,
// the same for all of them.
async function consumerOf(n) {
  const stream = await jsm.streams.find(`${prefix}.${n}._.lifecycle`);
  const name = `${role}-p${n}`;
  const config = {
    durable_name: name,
    filter_subjects: [`${prefix}.${n}.>`],
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.New,
    ack_wait: 30_000_000_000, // 30 s, in nanoseconds: a replica silent that long has its messages sent to another
    max_ack_pending: 10_000,
    priority_policy: "pinned_client",
    priority_groups: [group],
    priority_timeout: 5_000_000_000, // the pin lapses 5 s after this replica stops pulling
  };
  try {
    await jsm.consumers.add(stream, config);
  } catch (e) {
    if (!/already in use|exists/.test(e.message)) throw e; // another replica made it first
  }
  return js.consumers.get(stream, name);
}

const calls = new Map(); // call id → {open: Set, started, frames: {participant: n}}
function handle(n, m) {
  const kind = m.subject.split(".")[3];
  const p = decodeRaw(m.data);
  let c = calls.get(p.call);
  if (!c) calls.set(p.call, (c = { open: new Set(), started: false, frames: {} }));
  if (kind === "audio") {
    c.frames[p.participant] = (c.frames[p.participant] ?? 0) + 1;
  } else if (kind === "lifecycle") {
    if (p.type === "started") {
      c.open.add(p.connection);
      c.started = true;
    } else if (p.type === "ended") {
      c.open.delete(p.connection);
      if (c.open.size === 0) {
        // A call whose start another replica handled (and acknowledged)
        // before its partition came here is counted from then: partial.
        console.log(JSON.stringify({ member, call: p.call, partition: n, frames: c.frames, ...(c.started ? {} : { partial: true }) }));
        calls.delete(p.call);
      }
    }
  }
  m.ack();
}

async function work(n) {
  const c = await consumerOf(n);
  const messages = await c.consume({ group, max_messages: 256 });
  (async () => {
    for await (const s of messages.status()) {
      if (s.type === "consumer_pinned") log("claimed", { partition: n });
      if (s.type === "consumer_unpinned") log("released", { partition: n });
    }
  })();
  for await (const m of messages) handle(n, m);
}

const mine = [], others = [];
for (let n = 0; n < partitions; n++) (n % members === index ? mine : others).push(n);
log("joining", { role, partitions, mine: mine.length });
const running = mine.map(work);
setTimeout(() => others.forEach((n) => running.push(work(n))), standby);
process.on("SIGTERM", async () => {
  await nc.drain(); // the pins lapse and the other replicas take the partitions
  process.exit(0);
});
await nc.closed();
