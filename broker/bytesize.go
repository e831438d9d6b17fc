package broker

import (
	"fmt"
	"strconv"
	"strings"
)

// ByteSize is a size setting that reads "64KiB", "10GiB", "500MB" or a plain
// number of bytes, so settings stay legible in a compose file.
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// UnmarshalText parses a size; -1 means unlimited where a setting allows it.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	mult := int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("size %q: want a number with an optional unit (KiB, MiB, GiB, KB, MB, GB)", text)
	}
	if n > 0 && n > (1<<62)/mult {
		return fmt.Errorf("size %q is too large", text)
	}
	*b = ByteSize(n * mult)
	return nil
}

// String formats the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	v := int64(b)
	for i := 3; i >= 0; i-- {
		if m := byteUnits[i].mult; v != 0 && v%m == 0 {
			return strconv.FormatInt(v/m, 10) + byteUnits[i].suffix
		}
	}
	return strconv.FormatInt(v, 10)
}
