package codec

import (
	"errors"
	"fmt"
)

// Token is an id as subjects, KV keys and file names hold it (EncodeToken).
// It is a type of its own so that a raw id cannot be passed where a token
// is meant: the two look alike for GUIDs and differ for every real ACS
// participant id ("8:acs:…" is "8_3Aacs_3A…").
type Token string

// MixedToken stands for "no participant" (mixed audio, or a DTMF tone or
// transcript without participantRawID). EncodeToken never produces it,
// because it escapes every '_' it sees.
const MixedToken Token = "_mixed"

// ErrBadToken is returned by DecodeToken for a string EncodeToken could not
// have produced.
var ErrBadToken = errors.New("malformed subject token")

const hexDigits = "0123456789ABCDEF"

// MaxTokenLen bounds a token: it names a folder or, with ".wav", a file,
// and file systems take names of up to 255 bytes. Escaping can triple an
// id, so the receiver refuses ids whose token would be longer.
const MaxTokenLen = 240

// TokenLen is the length of id's token, without building it.
func TokenLen(id string) int {
	if id == "" {
		return len(MixedToken)
	}
	n := len(id)
	for i := 0; i < len(id); i++ {
		if !tokenSafe(id[i]) {
			n += 2
		}
	}
	return n
}

func tokenSafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}

// EncodeToken turns an arbitrary id into a string usable as one NATS subject
// token, KV key or file name: bytes A-Z a-z 0-9 and '-' stay as they are,
// every other byte becomes '_' and two upper-case hex digits. The empty id
// (mixed audio) becomes MixedToken. The mapping is reversible by DecodeToken.
func EncodeToken(id string) Token {
	if id == "" {
		return MixedToken
	}
	n := 0
	for i := 0; i < len(id); i++ {
		if !tokenSafe(id[i]) {
			n++
		}
	}
	if n == 0 {
		return Token(id)
	}
	return Token(AppendToken(make([]byte, 0, len(id)+2*n), id))
}

// AppendToken appends the token of id to dst, as EncodeToken would return it.
func AppendToken(dst []byte, id string) []byte {
	if id == "" {
		return append(dst, MixedToken...)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if tokenSafe(c) {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '_', hexDigits[c>>4], hexDigits[c&0xF])
	}
	return dst
}

// DecodeToken reverses EncodeToken. MixedToken decodes to the empty id.
func DecodeToken(tok Token) (string, error) {
	if tok == MixedToken {
		return "", nil
	}
	if tok == "" {
		return "", fmt.Errorf("%w: empty", ErrBadToken)
	}
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if tokenSafe(c) {
			out = append(out, c)
			continue
		}
		if c != '_' || i+2 >= len(tok) {
			return "", fmt.Errorf("%w: %q at offset %d", ErrBadToken, c, i)
		}
		hi, lo := unhex(tok[i+1]), unhex(tok[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: bad escape at offset %d", ErrBadToken, i)
		}
		b := byte(hi<<4 | lo)
		if tokenSafe(b) {
			// Escaping a safe byte would give one id two tokens.
			return "", fmt.Errorf("%w: needless escape at offset %d", ErrBadToken, i)
		}
		out = append(out, b)
		i += 2
	}
	return string(out), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
