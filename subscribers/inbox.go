package subscribers

import (
	"errors"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// delivery is what the consumer's Next gave: a message or an error.
type delivery struct {
	msg jetstream.Msg
	err error
}

// errConsumeClosed: the consumer's subscription ended by itself, without a
// terminal error said (consume starts it again).
var errConsumeClosed = errors.New("partition consumer closed")

// inbox queues a consumer's deliveries for the partition's goroutine.
type inbox struct {
	mu    sync.Mutex
	queue []delivery
	last  error // the last error nats.go reported
	wake  chan struct{}
}

// message queues a delivery (nats.go's Consume callback).
func (in *inbox) message(msg jetstream.Msg) { in.put(delivery{msg: msg}) }

// failed queues an error nats.go reports (a missed heartbeat, the consumer
// deleted).
func (in *inbox) failed(_ jetstream.ConsumeContext, err error) {
	in.mu.Lock()
	in.last = err
	in.mu.Unlock()
	in.put(delivery{err: err})
}

func (in *inbox) put(d delivery) {
	in.mu.Lock()
	in.queue = append(in.queue, d)
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// terminal is the error that ended the subscription, if nats.go said one.
func (in *inbox) terminal() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.last
}

func (in *inbox) take() []delivery {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.queue
	in.queue = nil
	return q
}
