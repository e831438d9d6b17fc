package broker

import "time"

// SetProvisionBackoff shortens the waits between provisioning attempts and
// returns the function that restores them.
func SetProvisionBackoff(d time.Duration) func() {
	old := provisionBackoff
	provisionBackoff = d
	return func() { provisionBackoff = old }
}

// ProbeTokens are the made-up calls the mapping check asks about.
var ProbeTokens = probeTokens
