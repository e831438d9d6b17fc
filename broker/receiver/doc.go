// Package receiver is the ingress: the WebSocket endpoint ACS streams
// calls into, which turns every ACS message into a bus payload (see package
// codec) and publishes it to JetStream on the subjects of package broker,
// with ACS's authentication, TLS, and the audio played back into calls.
//
// The receiver keeps state per socket only (the metadata, sequence numbers
// and frame counts of that socket), so any replica can take any call.
package receiver
