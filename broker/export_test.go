package broker

import "time"

// SetUnknownKIDEvery shortens the unknown-key refresh limit for a test and
// returns the function that restores it.
func SetUnknownKIDEvery(d time.Duration) func() {
	old := unknownKIDEvery
	unknownKIDEvery = d
	return func() { unknownKIDEvery = old }
}
