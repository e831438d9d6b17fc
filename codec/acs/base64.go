package acs

import "encoding/base64"

// b64Tables maps each base64 character of the standard alphabet to its six
// bits, pre-shifted for each of the four places in a quantum, so a quantum
// decodes with four loads and three ORs. Any other byte sets bit 24.
var b64Tables = func() (t [4][256]uint32) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		for c := range t[i] {
			t[i][c] = 1 << 24
		}
	}
	for v := 0; v < len(alphabet); v++ {
		c := alphabet[v]
		t[0][c], t[1][c], t[2][c], t[3][c] = uint32(v)<<18, uint32(v)<<12, uint32(v)<<6, uint32(v)
	}
	return t
}()

// decodeBase64 decodes standard, padded base64 into dst, which must hold
// len(src)/4*3 bytes. It answers false for anything but a clean encoding
// (a byte outside the alphabet, padding before the end, a length that is
// not whole quanta), and the caller then uses encoding/base64, which also
// gives the precise error. The last quantum goes through encoding/base64
// too, so padding is treated exactly as it treats it.
func decodeBase64(dst, src []byte) (int, bool) {
	if len(src) == 0 || len(src)%4 != 0 {
		return 0, false
	}
	t0, t1, t2, t3 := &b64Tables[0], &b64Tables[1], &b64Tables[2], &b64Tables[3]
	body := len(src) - 4
	n := 0
	var bad uint32
	for i := 0; i < body; i += 4 {
		v := t0[src[i]] | t1[src[i+1]] | t2[src[i+2]] | t3[src[i+3]]
		bad |= v
		dst[n], dst[n+1], dst[n+2] = byte(v>>16), byte(v>>8), byte(v)
		n += 3
	}
	if bad&(1<<24) != 0 {
		return 0, false
	}
	m, err := base64.StdEncoding.Decode(dst[n:n+3], src[body:])
	if err != nil {
		return 0, false
	}
	return n + m, true
}
