package broker

import "time"

// SetProvisionBackoff shortens the waits between provisioning attempts and
// returns the function that restores them.
func SetProvisionBackoff(d time.Duration) func() {
	old := provisionBackoff
	provisionBackoff = d
	return func() { provisionBackoff = old }
}
