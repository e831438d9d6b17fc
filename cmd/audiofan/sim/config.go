package sim

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Config says what to simulate. Zero values are not defaults: use Defaults.
type Config struct {
	URL          string        // the receiver's /ws
	Calls        int           // concurrent calls
	Participants int           // speakers per call
	Mixed        bool          // one mixed stream instead of one per participant
	Rate         int           // 16000 or 24000
	Duration     time.Duration // call length; with WAV files 0 means each file once
	Ramp         time.Duration // spread call starts over this
	Realtime     bool          // a 20 ms clock per socket; false: as fast as the receiver reads
	WAV          []string      // audio files, one per participant (cycled); empty: synthetic voices
	Transcripts  bool          // a transcription socket per call
	DTMF         bool          // a DTMF tone every 5 s of call time
	Bearer       string        // sent as Authorization: Bearer
	Secret       string        // sent as the token query parameter
	CAFile       string        // PEM CA for a wss:// receiver with a private certificate
	CallPrefix   string        // call ids are <prefix>-<n>
	Seed         uint64        // for the synthetic conversations
	Verify       bool          // read the bus and check what was stored
	Settle       time.Duration // how long verification waits for the last messages
}

// Defaults is one real-time call of two speakers for ten seconds against a
// local `audiofan serve`.
func Defaults() Config {
	return Config{URL: "ws://127.0.0.1:8080/ws", Calls: 1, Participants: 2, Rate: 16000, Duration: 10 * time.Second,
		Realtime: true, Seed: 1, Settle: 30 * time.Second}
}

// Validate checks the configuration; its errors fit on one line.
func (c *Config) Validate() error {
	u, err := url.Parse(c.URL)
	switch {
	case err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "":
		return fmt.Errorf("--url %q: want ws://host:port/path or wss://…", c.URL)
	case c.Calls < 1 || c.Calls > 100000:
		return fmt.Errorf("--calls %d: want 1 to 100000", c.Calls)
	case c.Participants < 1 || c.Participants > 64:
		return fmt.Errorf("--participants %d: want 1 to 64", c.Participants)
	case c.Rate != 16000 && c.Rate != 24000:
		return fmt.Errorf("--rate %d: ACS streams 16000 or 24000", c.Rate)
	case c.Duration < 0 || c.Ramp < 0:
		return errors.New("--duration and --ramp must not be negative")
	case c.Duration == 0 && len(c.WAV) == 0:
		return errors.New("--duration 0 plays WAV files once; without --wav it needs a length")
	case c.Settle <= 0:
		return errors.New("--settle must be positive")
	}
	return nil
}
