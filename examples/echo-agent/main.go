// Command echo-agent is a tiny ACS media-streaming application, of the kind
// Microsoft's quickstart builds: it takes the WebSocket ACS opens for a
// call, reads AudioMetadata and AudioData, and speaks back into the call,
// here by playing back each second of speech it heard (a parrot). A DTMF
// "*" stops what it plays (StopAudio). It knows nothing of audiofan:
// behind the forwarder it runs as it would behind ACS.
//
//	go run ./examples/echo-agent -listen 127.0.0.1:8081
//	AUDIOFAN_FORWARD_URL='ws://127.0.0.1:8081/ws#name=echo&kinds=audio,dtmf' audiofan serve
package main

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"log"
	"net/http"

	"github.com/gorilla/websocket"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "address to listen on; the media socket is /ws")
	flag.Parse()
	log.Printf("echo-agent on ws://%s/ws", *listen)
	log.Fatal(http.ListenAndServe(*listen, handler()))
}

// handler serves the media socket at /ws.
func handler() http.Handler {
	mux := http.NewServeMux()
	up := websocket.Upgrader{}
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		log.Printf("call %s: media socket open", r.Header.Get("x-ms-call-connection-id"))
		parrot(conn)
	})
	return mux
}

// message is the part of ACS's media messages the parrot reads.
type message struct {
	Kind          string `json:"kind"`
	AudioMetadata *struct {
		SampleRate int `json:"sampleRate"`
	} `json:"audioMetadata"`
	AudioData *struct {
		Data   string `json:"data"`
		Silent bool   `json:"silent"`
	} `json:"audioData"`
	DtmfData *struct {
		Data string `json:"data"`
	} `json:"dtmfData"`
}

// parrot plays each second of speech back into the call once it has heard
// it, until the socket closes.
func parrot(conn *websocket.Conn) {
	rate := 16000
	var heard []byte
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			return
		}
		var m message
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		switch {
		case m.Kind == "AudioMetadata" && m.AudioMetadata != nil:
			rate = m.AudioMetadata.SampleRate
		case m.Kind == "AudioData" && m.AudioData != nil && !m.AudioData.Silent:
			pcm, err := base64.StdEncoding.DecodeString(m.AudioData.Data)
			if err != nil {
				continue
			}
			heard = append(heard, pcm...)
			if len(heard) >= 2*rate { // a second of 16-bit mono
				reply, _ := json.Marshal(map[string]any{"kind": "AudioData", "audioData": map[string]string{
					"data": base64.StdEncoding.EncodeToString(heard)}})
				if conn.WriteMessage(websocket.TextMessage, reply) != nil {
					return
				}
				heard = heard[:0]
			}
		case m.Kind == "DtmfData" && m.DtmfData != nil && m.DtmfData.Data == "*":
			if conn.WriteMessage(websocket.TextMessage, []byte(`{"kind":"StopAudio","audioData":null,"stopAudio":{}}`)) != nil {
				return
			}
		}
	}
}
