// Package subscribers is the engine every role runs on: the Group, which
// shares the stream's partitions among a role's replicas (membership,
// assignment, checkpoints, takeover), runs each call of a partition in its
// own goroutine, and holds the acknowledgement policy; the Role and
// CallHandler a role implements; Output, through which a role emits its
// events exactly once; and Decode, which reads a stored message by its
// subject. Roles live in the packages below it and use only this package,
// subscribers/speech, broker and codec (TestLayout checks).
package subscribers
