package acs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Errors returned by Parser.Parse. Each one names a different kind of bad
// input, so a caller can count and answer them separately with errors.Is.
var (
	// ErrMalformed: not a JSON object, or not valid JSON at all.
	ErrMalformed = errors.New("malformed JSON")
	// ErrFieldType: valid JSON, but a field of a known kind has the wrong type
	// or is missing.
	ErrFieldType = errors.New("wrong field type")
	// ErrBase64: AudioData.data is not standard, padded base64.
	ErrBase64 = errors.New("invalid base64 audio")
	// ErrPCMLength: the decoded audio is not a whole number of 16-bit samples.
	ErrPCMLength = errors.New("audio length is not whole 16-bit samples")
	// ErrTimestamp: a timestamp that is not RFC 3339.
	ErrTimestamp = errors.New("invalid timestamp")
)

// Kind is the type of an inbound ACS message.
type Kind uint8

// The inbound kinds audiofan understands. KindUnknown is any other kind: the
// protocol asks receivers to ignore those, since newer service versions add
// kinds.
const (
	KindUnknown Kind = iota
	KindAudioMetadata
	KindAudioData
	KindDtmfData
	KindTranscriptionMetadata
	KindTranscriptionData
)

var kindNames = [...]string{"Unknown", "AudioMetadata", "AudioData", "DtmfData", "TranscriptionMetadata", "TranscriptionData"}

// String returns the ACS name of the kind.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// AudioMetadata is the first message of a media socket.
type AudioMetadata struct {
	SubscriptionID string `json:"subscriptionId"`
	Encoding       string `json:"encoding"`
	SampleRate     int    `json:"sampleRate"`
	Channels       int    `json:"channels"`
	Length         int    `json:"length"`
}

// AudioData is one 20 ms frame. Participant and PCM point into memory owned by
// the Parser (or the parsed message) and are valid only until the next Parse.
type AudioData struct {
	// Timestamp is the capture time; zero when ACS sent none.
	Timestamp time.Time
	// Participant is the raw id of the speaker; empty for mixed audio.
	Participant []byte
	// PCM is the decoded audio: signed 16-bit little-endian samples.
	PCM    []byte
	Silent bool
}

// DtmfData is one DTMF tone.
type DtmfData struct {
	Tone        string
	Timestamp   time.Time
	Participant string
}

// TranscriptionMetadata is the first message of a transcription socket. Its
// fields are read leniently: a documented sample holds a malformed GUID.
type TranscriptionMetadata struct {
	SubscriptionID          string   `json:"subscriptionId"`
	Locale                  string   `json:"locale"`
	Locales                 []string `json:"locales"`
	CallConnectionID        string   `json:"callConnectionId"`
	CorrelationID           string   `json:"correlationId"`
	SpeechModelEndpointID   string   `json:"speechModelEndpointId"`
	EnableSentimentAnalysis bool     `json:"enableSentimentAnalysis"`
}

// TranscriptionData is one recognition result.
type TranscriptionData struct {
	Text       string
	Format     string
	Confidence float64
	// Offset and Duration are in 100 ns ticks; Duration is -1 when ACS sent none.
	Offset      int64
	Duration    int64
	Words       []Word
	Participant string
	Final       bool
	Sentiment   string
	Language    string
}

// Word is one recognised word of a transcript, with times in 100 ns ticks
// (Duration -1 when unknown).
type Word struct {
	Text     string
	Offset   int64
	Duration int64
}

// Inbound is the result of parsing one ACS message; Kind says which field is set.
type Inbound struct {
	Kind Kind
	// KindName is the kind as sent, kept for KindUnknown so it can be reported.
	KindName              string
	AudioMetadata         AudioMetadata
	AudioData             AudioData
	Dtmf                  DtmfData
	TranscriptionMetadata TranscriptionMetadata
	TranscriptionData     TranscriptionData
}

// Parser parses inbound ACS messages. It keeps a scratch buffer for decoded
// audio, so one Parser serves one goroutine (one socket) at a time.
type Parser struct {
	pcm []byte
}

// Parse parses msg into in. On error in is left in an unspecified state. The
// slices in in.AudioData are valid until the next call.
func (p *Parser) Parse(msg []byte, in *Inbound) error {
	if p.fastAudio(msg, &in.AudioData) {
		in.Kind = KindAudioData
		in.KindName = ""
		return nil
	}
	return p.parseSlow(msg, in)
}

// envelope is the reference decoding with encoding/json; every body is kept
// raw so that a bad field in a body we do not read cannot fail the message.
type envelope struct {
	Kind                  *string         `json:"kind"`
	AudioMetadata         json.RawMessage `json:"audioMetadata"`
	AudioData             json.RawMessage `json:"audioData"`
	DtmfData              json.RawMessage `json:"dtmfData"`
	TranscriptionMetadata json.RawMessage `json:"transcriptionMetadata"`
	TranscriptionData     json.RawMessage `json:"transcriptionData"`
}

type audioDataJSON struct {
	Timestamp        *string `json:"timestamp"`
	ParticipantRawID *string `json:"participantRawID"`
	Data             *string `json:"data"`
	Silent           *bool   `json:"silent"`
}

type dtmfJSON struct {
	Data             *string `json:"data"`
	Timestamp        *string `json:"timestamp"`
	ParticipantRawID *string `json:"participantRawID"`
}

type transcriptionMetadataJSON struct {
	TranscriptionMetadata
	SpeechRecognitionModelEndpointID string `json:"speechRecognitionModelEndpointId"`
}

type transcriptionDataJSON struct {
	Text             string      `json:"text"`
	Format           string      `json:"format"`
	Confidence       float64     `json:"confidence"`
	Offset           json.Number `json:"offset"`
	Duration         json.Number `json:"duration"`
	Words            []wordJSON  `json:"words"`
	ParticipantRawID string      `json:"participantRawID"`
	ResultStatus     string      `json:"resultStatus"`
	Sentiment        *struct {
		Sentiment string `json:"sentiment"`
	} `json:"sentimentAnalysisResult"`
	LanguageIdentified string `json:"languageIdentified"`
}

type wordJSON struct {
	Text     string      `json:"text"`
	Offset   json.Number `json:"offset"`
	Duration json.Number `json:"duration"`
}

func (p *Parser) parseSlow(msg []byte, in *Inbound) error {
	var env envelope
	if err := json.Unmarshal(msg, &env); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%w: envelope field %q: %v", ErrFieldType, te.Field, err)
		}
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if env.Kind == nil {
		return fmt.Errorf("%w: no kind", ErrFieldType)
	}
	in.KindName = ""
	kind := *env.Kind
	switch {
	case strings.EqualFold(kind, "AudioData"):
		in.Kind = KindAudioData
		return p.slowAudio(env.AudioData, &in.AudioData)
	case strings.EqualFold(kind, "AudioMetadata"):
		in.Kind = KindAudioMetadata
		in.AudioMetadata = AudioMetadata{}
		return decodeBody("audioMetadata", env.AudioMetadata, &in.AudioMetadata)
	case strings.EqualFold(kind, "DtmfData"):
		in.Kind = KindDtmfData
		return slowDtmf(env.DtmfData, &in.Dtmf)
	case strings.EqualFold(kind, "TranscriptionMetadata"):
		in.Kind = KindTranscriptionMetadata
		return slowTranscriptionMetadata(env.TranscriptionMetadata, &in.TranscriptionMetadata)
	case strings.EqualFold(kind, "TranscriptionData"):
		in.Kind = KindTranscriptionData
		return slowTranscriptionData(env.TranscriptionData, &in.TranscriptionData)
	}
	in.Kind = KindUnknown
	in.KindName = kind
	return nil
}

func decodeBody(name string, raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return fmt.Errorf("%w: missing %s", ErrFieldType, name)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrFieldType, name, err)
	}
	return nil
}

func (p *Parser) slowAudio(raw json.RawMessage, out *AudioData) error {
	var a audioDataJSON
	if err := decodeBody("audioData", raw, &a); err != nil {
		return err
	}
	if a.Data == nil {
		return fmt.Errorf("%w: audioData.data missing", ErrFieldType)
	}
	ts, err := optionalTimestamp(a.Timestamp)
	if err != nil {
		return err
	}
	*out = AudioData{Timestamp: ts}
	if a.ParticipantRawID != nil {
		out.Participant = []byte(*a.ParticipantRawID)
	}
	if a.Silent != nil {
		out.Silent = *a.Silent
	}
	if out.PCM, err = p.decodePCM([]byte(*a.Data)); err != nil {
		return err
	}
	return nil
}

// decodePCM decodes base64 audio into the parser's scratch buffer.
func (p *Parser) decodePCM(b64 []byte) ([]byte, error) {
	n := base64.StdEncoding.DecodedLen(len(b64))
	if cap(p.pcm) < n {
		p.pcm = make([]byte, n)
	}
	n, err := base64.StdEncoding.Decode(p.pcm[:n], b64)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBase64, err)
	}
	if n%2 != 0 {
		return nil, fmt.Errorf("%w: %d bytes", ErrPCMLength, n)
	}
	return p.pcm[:n], nil
}

func slowDtmf(raw json.RawMessage, out *DtmfData) error {
	var d dtmfJSON
	if err := decodeBody("dtmfData", raw, &d); err != nil {
		return err
	}
	if d.Data == nil {
		return fmt.Errorf("%w: dtmfData.data missing", ErrFieldType)
	}
	ts, err := optionalTimestamp(d.Timestamp)
	if err != nil {
		return err
	}
	*out = DtmfData{Tone: *d.Data, Timestamp: ts}
	if d.ParticipantRawID != nil {
		out.Participant = *d.ParticipantRawID
	}
	return nil
}

// optionalTimestamp parses a timestamp that may be absent, null or empty (all
// three mean "unknown": the zero time).
func optionalTimestamp(s *string) (time.Time, error) {
	if s == nil || *s == "" {
		return time.Time{}, nil
	}
	return ParseTimestamp([]byte(*s))
}

func slowTranscriptionMetadata(raw json.RawMessage, out *TranscriptionMetadata) error {
	var m transcriptionMetadataJSON
	if len(raw) == 0 || string(raw) == "null" {
		return fmt.Errorf("%w: missing transcriptionMetadata", ErrFieldType)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		// encoding/json keeps decoding past a type mismatch; the ids we need
		// are still good, so a preview field of an unexpected type is no reason
		// to refuse the socket.
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || te.Field == "" {
			return fmt.Errorf("%w: transcriptionMetadata: %v", ErrFieldType, err)
		}
	}
	*out = m.TranscriptionMetadata
	if out.SpeechModelEndpointID == "" {
		out.SpeechModelEndpointID = m.SpeechRecognitionModelEndpointID
	}
	return nil
}

func slowTranscriptionData(raw json.RawMessage, out *TranscriptionData) error {
	var t transcriptionDataJSON
	if err := decodeBody("transcriptionData", raw, &t); err != nil {
		return err
	}
	*out = TranscriptionData{
		Text:        t.Text,
		Format:      t.Format,
		Confidence:  t.Confidence,
		Participant: t.ParticipantRawID,
		Final:       strings.EqualFold(t.ResultStatus, "Final"),
		Language:    t.LanguageIdentified,
	}
	if t.Sentiment != nil {
		out.Sentiment = t.Sentiment.Sentiment
	}
	var err error
	if out.Offset, err = ticks(t.Offset, 0, "offset"); err != nil {
		return err
	}
	if out.Duration, err = ticks(t.Duration, -1, "duration"); err != nil {
		return err
	}
	if len(t.Words) > 0 {
		out.Words = make([]Word, len(t.Words))
		for i, w := range t.Words {
			out.Words[i].Text = w.Text
			if out.Words[i].Offset, err = ticks(w.Offset, 0, "words.offset"); err != nil {
				return err
			}
			if out.Words[i].Duration, err = ticks(w.Duration, -1, "words.duration"); err != nil {
				return err
			}
		}
	}
	return nil
}

// ticks parses an integer tick count exactly (never through float64, which
// would corrupt the 19-digit offsets early services sent).
func ticks(n json.Number, missing int64, field string) (int64, error) {
	if n == "" {
		return missing, nil
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: transcriptionData.%s %q is not a 64-bit integer", ErrFieldType, field, n)
	}
	return v, nil
}

// ParseTimestamp parses an ACS timestamp: RFC 3339 with 0 to 9 fractional
// digits. The result is in UTC.
func ParseTimestamp(b []byte) (time.Time, error) {
	if t, ok := parseTimestampFast(b); ok {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %q", ErrTimestamp, b)
	}
	return t.UTC(), nil
}

// parseTimestampFast handles the shape ACS sends, YYYY-MM-DDTHH:MM:SS[.f]Z,
// without allocating; anything else goes to time.Parse.
func parseTimestampFast(b []byte) (time.Time, bool) {
	if len(b) < 20 || b[len(b)-1] != 'Z' || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	year, ok1 := digits(b[0:4])
	month, ok2 := digits(b[5:7])
	day, ok3 := digits(b[8:10])
	hour, ok4 := digits(b[11:13])
	minute, ok5 := digits(b[14:16])
	sec, ok6 := digits(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return time.Time{}, false
	}
	nsec := 0
	frac := b[19 : len(b)-1]
	if len(frac) > 0 {
		if frac[0] != '.' || len(frac) < 2 || len(frac) > 10 {
			return time.Time{}, false
		}
		f, ok := digits(frac[1:])
		if !ok {
			return time.Time{}, false
		}
		for i := len(frac) - 1; i < 9; i++ {
			f *= 10
		}
		nsec = f
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC), true
}

func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// fastAudio parses the common shape of an AudioData message without
// encoding/json. It answers false for anything it is not sure about (other
// kinds, escapes, non-ASCII, nested unknown fields, invalid data), leaving the
// message to parseSlow, which then also produces the precise error. So for
// every input it accepts it returns what parseSlow would.
func (p *Parser) fastAudio(msg []byte, out *AudioData) bool {
	s := scanner{b: msg}
	if !s.consume('{') {
		return false
	}
	var ts, part, data []byte
	var silent, hasData, hasTS, isAudio, hasBody bool
	body := func(key []byte) bool {
		switch {
		case asciiEqualFold(key, "timestamp"):
			ts, hasTS = s.str()
			return hasTS
		case asciiEqualFold(key, "participantRawID"):
			var ok bool
			part, ok = s.str()
			return ok
		case asciiEqualFold(key, "data"):
			data, hasData = s.base64Str()
			return hasData
		case asciiEqualFold(key, "silent"):
			var ok bool
			silent, ok = s.boolean()
			return ok
		}
		return s.scalar()
	}
	if !s.object(func(key []byte) bool {
		switch {
		case asciiEqualFold(key, "kind"):
			v, ok := s.str()
			isAudio = ok && asciiEqualFold(v, "AudioData")
			return isAudio
		case asciiEqualFold(key, "audioData"):
			if hasBody {
				return false // a repeated body: leave the precedence rules to encoding/json
			}
			hasBody = true
			return s.consume('{') && s.object(body)
		}
		// The reference decoder keeps the other bodies raw without looking
		// inside; we only skip scalars and leave nesting to it.
		return s.scalar()
	}) {
		return false
	}
	s.ws()
	if s.i != len(s.b) || !isAudio || !hasData {
		return false
	}
	var t time.Time
	if hasTS {
		var ok bool
		if t, ok = parseTimestampFast(ts); !ok {
			return false
		}
	}
	// base64Str left validation to the decoder, which takes nothing but the
	// alphabet and final padding (encoding/base64 would skip CR and LF).
	if need := len(data) / 4 * 3; cap(p.pcm) < need {
		p.pcm = make([]byte, need)
	}
	n, ok := decodeBase64(p.pcm[:cap(p.pcm)], data)
	if !ok || n%2 != 0 {
		return false
	}
	pcm := p.pcm[:n]
	*out = AudioData{Timestamp: t, Participant: part, PCM: pcm, Silent: silent}
	return true
}

// scanner walks JSON that the fast path understands. Every method answers
// false for input outside that subset.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) consume(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// object walks the members of an object whose '{' was consumed, calling
// member with each key positioned at its value.
func (s *scanner) object(member func(key []byte) bool) bool {
	if s.consume('}') {
		return true
	}
	for {
		key, ok := s.str()
		if !ok || !s.consume(':') {
			return false
		}
		s.ws()
		if !member(key) {
			return false
		}
		if s.consume(',') {
			continue
		}
		return s.consume('}')
	}
}

// base64Str reads a string without checking its bytes: the caller must
// decode it as base64, which accepts none of the bytes str refuses but CR and
// LF. An escaped quote ends it early, and the '\\' left inside fails decoding.
func (s *scanner) base64Str() ([]byte, bool) {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	end := bytes.IndexByte(s.b[start:], '"')
	if end < 0 {
		return nil, false
	}
	s.i = start + end + 1
	return s.b[start : start+end], true
}

// str reads a string of printable ASCII without escapes and returns its content.
func (s *scanner) str() ([]byte, bool) {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	end := bytes.IndexByte(s.b[start:], '"')
	if end < 0 {
		return nil, false
	}
	v := s.b[start : start+end]
	for _, c := range v {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return nil, false
		}
	}
	s.i = start + end + 1
	return v, true
}

func (s *scanner) boolean() (bool, bool) {
	s.ws()
	switch {
	case bytes.HasPrefix(s.b[s.i:], []byte("true")):
		s.i += 4
		return true, true
	case bytes.HasPrefix(s.b[s.i:], []byte("false")):
		s.i += 5
		return false, true
	}
	return false, false
}

// scalar skips a string, number, true, false or null.
func (s *scanner) scalar() bool {
	s.ws()
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == 't' || c == 'f':
		_, ok := s.boolean()
		return ok
	case c == 'n':
		if bytes.HasPrefix(s.b[s.i:], []byte("null")) {
			s.i += 4
			return true
		}
		return false
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return false
}

// number skips a number in strict JSON grammar.
func (s *scanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	s.i = i
	return true
}

// asciiEqualFold reports whether b equals the ASCII string s ignoring case,
// as encoding/json matches keys for ASCII names.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x|0x20 != y|0x20 || (x|0x20) < 'a' || (x|0x20) > 'z' {
			if x != y {
				return false
			}
		}
	}
	return true
}
