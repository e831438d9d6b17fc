package codec

import (
	"encoding/binary"
	"errors"
	"math"
	"time"
)

// errSlowPath sends UnmarshalFrame to the reflective decoder: the input is
// well-formed MessagePack in forms the fast path does not read (another
// encoder's choices).
var errSlowPath = errors.New("not on the fast path")

// maxDepth bounds the nesting wellFormed walks: no payload of ours nests
// deeper than a few levels.
const maxDepth = 32

// UnmarshalFrame decodes a Frame. The layout audiofan's own encoder writes
// (and any map of the Frame's keys in the usual MessagePack forms, unknown
// keys skipped) is read by hand, without reflection; other well-formed input
// goes through msgpack/v5, with the same result (the differential fuzz
// target checks it). Every subscriber decodes every frame: this is its hot
// path.
func UnmarshalFrame(b []byte, f *Frame) error {
	var g Frame
	if err := decodeFrameFast(b, &g); err == nil {
		*f = g
		return nil
	}
	*f = Frame{}
	return Unmarshal(b, f)
}

// wellFormed reports whether b is exactly one MessagePack value whose every
// declared length fits in b. msgpack/v5 allocates what a length says before
// reading it, so a hostile length of 4 GiB would exhaust memory: checked
// first, it is an error instead.
func wellFormed(b []byte) bool {
	r := &reader{b: b}
	return r.skip(0) == nil && r.i == len(b)
}

// skip reads past one value.
func (r *reader) skip(depth int) error {
	if depth > maxDepth {
		return errSlowPath
	}
	c, err := r.byte()
	if err != nil {
		return err
	}
	length := func(w int) (int, error) {
		s, err := r.n(w)
		if err != nil {
			return 0, err
		}
		var n uint64
		for _, x := range s {
			n = n<<8 | uint64(x)
		}
		if n > uint64(len(r.b)) {
			return 0, errSlowPath
		}
		return int(n), nil
	}
	items := func(n int) error {
		if n > len(r.b)-r.i { // every item takes a byte at least
			return errSlowPath
		}
		for range n {
			if err := r.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	}
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3: // fixints, nil, bools
		return nil
	case c&0xf0 == 0x80:
		return items(2 * int(c&0x0f))
	case c&0xf0 == 0x90:
		return items(int(c & 0x0f))
	case c&0xe0 == 0xa0:
		_, err := r.n(int(c & 0x1f))
		return err
	}
	var n int
	switch c {
	case 0xcc, 0xd0:
		_, err = r.n(1)
	case 0xcd, 0xd1:
		_, err = r.n(2)
	case 0xce, 0xd2, 0xca:
		_, err = r.n(4)
	case 0xcf, 0xd3, 0xcb:
		_, err = r.n(8)
	case 0xc4, 0xd9: // bin8, str8
		if n, err = length(1); err == nil {
			_, err = r.n(n)
		}
	case 0xc5, 0xda:
		if n, err = length(2); err == nil {
			_, err = r.n(n)
		}
	case 0xc6, 0xdb:
		if n, err = length(4); err == nil {
			_, err = r.n(n)
		}
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16
		_, err = r.n(1 + 1<<(c-0xd4))
	case 0xc7, 0xc8, 0xc9: // ext 8, 16, 32
		if n, err = length(1 << (c - 0xc7)); err == nil {
			_, err = r.n(1 + n)
		}
	case 0xdc:
		if n, err = length(2); err == nil {
			err = items(n)
		}
	case 0xdd:
		if n, err = length(4); err == nil {
			err = items(n)
		}
	case 0xde:
		if n, err = length(2); err == nil {
			err = items(2 * n)
		}
	case 0xdf:
		if n, err = length(4); err == nil {
			err = items(2 * n)
		}
	default:
		return errSlowPath // 0xc1, never used
	}
	return err
}

type reader struct {
	b []byte
	i int
}

func (r *reader) byte() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errSlowPath
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

func (r *reader) n(n int) ([]byte, error) {
	if n < 0 || len(r.b)-r.i < n {
		return nil, errSlowPath
	}
	s := r.b[r.i : r.i+n]
	r.i += n
	return s, nil
}

// str reads a string (fixstr, str8, str16, str32) without copying.
func (r *reader) str() ([]byte, error) {
	c, err := r.byte()
	if err != nil {
		return nil, err
	}
	var n int
	switch {
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xd9:
		l, err := r.n(1)
		if err != nil {
			return nil, err
		}
		n = int(l[0])
	case c == 0xda:
		l, err := r.n(2)
		if err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint16(l))
	case c == 0xdb:
		l, err := r.n(4)
		if err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint32(l))
	default:
		return nil, errSlowPath
	}
	return r.n(n)
}

// uint reads a non-negative integer in any of its forms.
func (r *reader) uint() (uint64, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	var w int
	switch {
	case c <= 0x7f:
		return uint64(c), nil
	case c == 0xcc:
		w = 1
	case c == 0xcd:
		w = 2
	case c == 0xce:
		w = 4
	case c == 0xcf:
		w = 8
	default:
		return 0, errSlowPath
	}
	s, err := r.n(w)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, x := range s {
		v = v<<8 | uint64(x)
	}
	return v, nil
}

// int reads an int field: what msgpack/v5 accepts for a Go int, within the
// non-negative forms audiofan writes.
func (r *reader) int() (int, error) {
	v, err := r.uint()
	if err != nil || v > math.MaxInt64 {
		return 0, errSlowPath
	}
	return int(v), nil
}

// time reads the timestamp extension (-1) as msgpack/v5 does.
func (r *reader) time() (time.Time, error) {
	c, err := r.byte()
	if err != nil {
		return time.Time{}, err
	}
	var n int
	switch c {
	case 0xd6:
		n = 4
	case 0xd7:
		n = 8
	case 0xc7:
		l, err := r.n(1)
		if err != nil || l[0] != 12 {
			return time.Time{}, errSlowPath
		}
		n = 12
	default:
		return time.Time{}, errSlowPath
	}
	if t, err := r.byte(); err != nil || t != 0xff {
		return time.Time{}, errSlowPath
	}
	b, err := r.n(n)
	if err != nil {
		return time.Time{}, err
	}
	var tm time.Time
	switch n {
	case 4:
		tm = time.Unix(int64(binary.BigEndian.Uint32(b)), 0)
	case 8:
		v := binary.BigEndian.Uint64(b)
		tm = time.Unix(int64(v&0x3ffffffff), int64(v>>34))
	default:
		tm = time.Unix(int64(binary.BigEndian.Uint64(b[4:])), int64(binary.BigEndian.Uint32(b)))
	}
	if tm.IsZero() {
		tm = tm.UTC() // as msgpack/v5: the zero time carries no zone
	}
	return tm, nil
}

func decodeFrameFast(b []byte, f *Frame) error {
	r := &reader{b: b}
	c, err := r.byte()
	if err != nil || c&0xf0 != 0x80 {
		return errSlowPath
	}
	for range int(c & 0x0f) {
		k, err := r.str()
		if err != nil {
			return err
		}
		switch string(k) {
		case "v":
			f.V, err = r.int()
		case "call":
			var s []byte
			s, err = r.str()
			f.Call = string(s)
		case "participant":
			var s []byte
			s, err = r.str()
			f.Participant = string(s)
		case "seq":
			f.Seq, err = r.uint()
		case "timestamp":
			f.Timestamp, err = r.time()
		case "receivedAt":
			f.ReceivedAt, err = r.time()
		case "sampleRate":
			f.SampleRate, err = r.int()
		case "channels":
			f.Channels, err = r.int()
		case "encoding":
			var s []byte
			s, err = r.str()
			f.Encoding = string(s)
		case "silent":
			var x byte
			if x, err = r.byte(); err == nil {
				switch x {
				case 0xc2:
					f.Silent = false
				case 0xc3:
					f.Silent = true
				default:
					err = errSlowPath
				}
			}
		case "data":
			f.Data, err = r.bin()
		default:
			err = r.skip(1) // a key added in a later version
		}
		if err != nil {
			return err
		}
	}
	if r.i != len(b) {
		return errSlowPath
	}
	return nil
}

// bin reads bin8/16/32 (or nil) into a new slice: the frame does not keep
// the message's buffer alive.
func (r *reader) bin() ([]byte, error) {
	c, err := r.byte()
	if err != nil {
		return nil, err
	}
	var w int
	switch c {
	case 0xc0:
		return nil, nil
	case 0xc4:
		w = 1
	case 0xc5:
		w = 2
	case 0xc6:
		w = 4
	default:
		return nil, errSlowPath
	}
	l, err := r.n(w)
	if err != nil {
		return nil, err
	}
	var n uint64
	for _, x := range l {
		n = n<<8 | uint64(x)
	}
	if n > uint64(len(r.b)) {
		return nil, errSlowPath
	}
	s, err := r.n(int(n))
	if err != nil {
		return nil, err
	}
	return append([]byte{}, s...), nil
}
