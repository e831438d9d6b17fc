package subscribers

// SetDropDeliveries has g's partitions lose the deliveries drop says, as a
// client too slow to take them does (nats.go drops what overflows a
// subscription). Call it before Run.
func SetDropDeliveries(g *Group, drop func() bool) { g.dropDelivery = drop }
