// tap.mjs <call-id>: prints one line per audio frame of a call, as JSON
// (participant, timestamp, bytes), from the call's first message, and exits
// once every socket of the call has ended. NATS_URL (and NATS_USER,
// NATS_PASSWORD) say where the bus is; default a local `audiofan serve`.
//
//   node tap.mjs demo-1
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, DeliverPolicy } from "@nats-io/jetstream";
import { callStream, decodeRaw, connectOptions } from "./contract.mjs";

const callId = process.argv[2];
if (!callId) {
  console.error("usage: node tap.mjs <call-id>");
  process.exit(2);
}
const nc = await connect(connectOptions());
const jsm = await jetstreamManager(nc);
const { stream, filter } = await callStream(jsm, callId);

// An ordered consumer: the server keeps nothing for it, and it reads the
// call's messages in the order they were stored.
const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: [filter], deliver_policy: DeliverPolicy.All });
const messages = await consumer.consume();
const open = new Set(); // the call's sockets started and not yet ended
let started = false;
for await (const m of messages) {
  const kind = m.subject.split(".")[3];
  const p = decodeRaw(m.data);
  if (kind === "audio") {
    console.log(JSON.stringify({ participant: p.participant, timestamp: p.timestamp, bytes: p.data.length }));
  } else if (kind === "lifecycle") {
    if (p.type === "started") {
      open.add(p.connection);
      started = true;
    } else if (p.type === "ended") {
      open.delete(p.connection);
    }
    if (started && open.size === 0) break; // each socket's ended comes after all its messages
  }
}
await messages.close();
await nc.drain();
