// Package sim is `audiofan sim`: a fake Azure Communication Services that
// streams calls into any receiver exactly as ACS does (upgrade headers,
// metadata first, one AudioData message per 20 ms, silent frames flagged,
// optional DTMF and a transcription socket), and, with verification on,
// reads the bus at the same time to report what was stored, lost,
// duplicated or reordered, and how long it took.
package sim
