// Package broker is the bus's contract: the subject scheme (as published,
// and as the stream stores it, partitioned by call), the CALLS stream and
// its provisioning. Everything that reads or writes the bus imports it;
// it links nats.go and nothing heavier (not the server, not the WebSocket
// or JWT libraries: those are broker/embedded's and broker/receiver's).
package broker
