// Parses every message in the file named by the first argument (one
// message a line, as audiofan sent it) with Microsoft's own Call Automation
// SDK, StreamingData.parse, and prints what the SDK made of each, one JSON
// object a line: the message's kind and its fields as an ACS application
// reads them. A message the SDK cannot parse ends it with an error.
import { readFileSync } from "node:fs";
import { StreamingData } from "@azure/communication-call-automation";
import { getIdentifierRawId } from "@azure/communication-common";

const lines = readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l !== "");
for (const line of lines) {
  const v = StreamingData.parse(line);
  const kind = StreamingData.getStreamingKind();
  const out = { kind };
  switch (kind) {
    case "AudioMetadata":
      Object.assign(out, { subscriptionId: v.subscriptionId, encoding: v.encoding, sampleRate: v.sampleRate, channels: v.channels });
      break;
    case "AudioData":
      Object.assign(out, { data: v.data, timestamp: v.timestamp, isSilent: v.isSilent,
        participant: v.participant === undefined ? "" : getIdentifierRawId(v.participant) });
      break;
    case "DtmfData":
      Object.assign(out, { data: v.data });
      break;
    case "TranscriptionMetadata":
      Object.assign(out, { subscriptionId: v.subscriptionId, callConnectionId: v.callConnectionId, correlationId: v.correlationId });
      break;
    case "TranscriptionData":
      Object.assign(out, { text: v.text, resultState: v.resultState, participant: getIdentifierRawId(v.participant) });
      break;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
