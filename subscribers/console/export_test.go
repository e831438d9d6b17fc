package console

import "github.com/audiofan/audiofan/codec"

// Feeds counts the call watchers and listening hubs running: one each per
// call however many pages look at it.
func Feeds(c *Console) (watchers, hubs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.watchers), len(c.hubs)
}

// Frames is how many frames the call's watcher has read, -1 without one.
func Frames(c *Console, tok codec.Token) int64 {
	c.mu.Lock()
	w := c.watchers[tok]
	c.mu.Unlock()
	if w == nil {
		return -1
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return int64(w.frames)
}
