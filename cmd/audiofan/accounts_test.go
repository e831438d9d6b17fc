package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/analytics"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/console"
	"github.com/audiofan/audiofan/subscribers/moderation"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// TestNATSAccounts runs every part of the stack under the users of
// deploy/nats/accounts.conf, on one server started as compose starts its
// nodes (deploy/nats/nats.conf) and as the Kubernetes pods load theirs (the
// chart's nats.conf with deploy/k8s/nats-values.yaml, the accounts file
// beside it): each does its work (a call stored, recorded, analysed,
// moderated, shown in the console; a recording of 80 s read back from the
// Object Store by every user), and none can change the stream or touch
// another role's consumers.
func TestNATSAccounts(t *testing.T) {
	t.Run("compose", func(t *testing.T) {
		t.Setenv("NATS_SERVER_NAME", "accounts")
		t.Setenv("NATS_RECEIVER_PASSWORD", "receiver-pw")
		t.Setenv("NATS_ROLE_PASSWORD", "role-pw")
		opts, err := server.ProcessConfigFile(filepath.Join(repo, "deploy/nats/nats.conf"))
		if err != nil {
			t.Fatal(err)
		}
		checkAccounts(t, opts, "receiver-pw", "role-pw")
	})
	t.Run("kubernetes", func(t *testing.T) {
		checkAccounts(t, kubernetesNATS(t), "k8s-receiver-pw", "k8s-role-pw")
	})
}

// checkAccounts starts one node from opts (on loopback, its store in a
// temporary folder) and runs the stack's users against it.
func checkAccounts(t *testing.T, opts *server.Options, receiverPW, rolePW string) {
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes, opts.RoutesStr = server.ClusterOpts{}, nil, ""
	opts.StoreDir, opts.NoSigs, opts.NoLog = t.TempDir(), true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	url := func(user, pw string) string { return "nats://" + user + ":" + pw + "@" + ns.Addr().String() }
	log := natstest.Logger()
	conn := func(user, pw string) (*nats.Conn, jetstream.JetStream, chan error) {
		violations := make(chan error, 16)
		nc, err := nats.Connect(url(user, pw), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case violations <- err:
			default:
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js, violations
	}

	// The receiver provisions the stream and stores a call.
	sc := natstest.Defaults[broker.StreamConfig](t)
	_, rjs, _ := conn("receiver", receiverPW)
	if _, err := broker.EnsureStream(t.Context(), rjs, sc, log); err != nil {
		t.Fatal(err)
	}

	tok := codec.EncodeToken("accounts-call")

	// Each role under its own user.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gc := conformance.Config(t)
	dataDir := t.TempDir()
	var stops []func()
	defer func() {
		cancel()
		for _, stop := range stops {
			stop()
		}
	}()
	bucket := ""
	for _, c := range components {
		own := c.Settings()
		natstest.Fill(t, own)
		if rc, ok := own.(*recording.Config); ok {
			rc.Store = "both"
			bucket = rc.Bucket
		}
		g, stop, err := startGroup(ctx, url(c.Command, rolePW), NATSSettings{}, sc.StreamRef, gc, "accounts "+c.Command, prometheus.NewRegistry(), log, c, own, dataDir)
		if err != nil {
			t.Fatalf("%s: %v", c.Command, err)
		}
		stops = append(stops, stop)
		conformance.WaitFor(t, c.Command+" ready", func() bool { return g.Ready() == nil })
	}

	// The console reads as the tools user.
	tnc, tjs, tviol := conn("tools", rolePW)
	c, err := console.New(natstest.Defaults[console.Config](t), console.Deps{NC: tnc, JS: tjs, Stream: sc.StreamRef, DataDir: dataDir,
		Roles: roleNames(), Reg: prometheus.NewRegistry(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(ctx) }()
	defer func() { cancel(); <-cdone }()
	web := httptest.NewServer(c.Handler())
	defer web.Close()

	for _, m := range conformance.Default("accounts-call") {
		data, err := codec.Marshal(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rjs.Publish(t.Context(), sc.Prefix+"."+m.Subject, data); err != nil {
			t.Fatal(err)
		}
	}

	// Every role finished the call, and wrote its output.
	for _, role := range []string{"recording", "analytics", "moderation"} {
		conformance.WaitFor(t, role+" finished the call", func() bool {
			done, err := subscribers.Finished(t.Context(), tjs, sc.StreamRef, role, codec.EncodeToken("accounts-call"))
			return err == nil && done
		})
	}
	if ev := conformance.Events(t, tjs, sc.StreamRef, "accounts-call", "recording"); len(ev) != 1 {
		t.Errorf("%d recording events", len(ev))
	}
	if ev := conformance.Events(t, tjs, sc.StreamRef, "accounts-call", "analytics"); len(ev) == 0 {
		t.Error("no analytics events")
	}
	checkLongRecording(t, rjs, tjs, sc, dataDir, bucket, rolePW, conn)

	conformance.WaitFor(t, "the console lists the call with its recording", func() bool {
		resp, err := http.Get(web.URL + "/api/calls")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var calls []console.CallView
		if json.NewDecoder(resp.Body).Decode(&calls) != nil {
			return false
		}
		for _, c := range calls {
			if c.ID == "accounts-call" && c.Recording != nil {
				return true
			}
		}
		return false
	})
	var health console.Health
	resp, err := http.Get(web.URL + "/api/health")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if health.Error != "" || len(health.Roles) != len(components) || !health.Roles[0].Present {
		t.Errorf("console health as tools: %+v", health)
	}
	// Its live feeds subscribe as tools too: the list's frame counter, a
	// call's page and listening in.
	for _, path := range []string{"/api/calls/feed", "/api/calls/" + string(tok) + "/feed"} {
		resp, err := http.Get(web.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		resp.Body.Close()
		if !strings.HasPrefix(line, "event: ") {
			t.Errorf("%s as tools: %s %q", path, resp.Status, line)
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(web.URL, "http")+"/api/calls/"+string(tok)+"/listen", nil)
	if err != nil {
		t.Fatalf("listening as tools: %v", err)
	}
	ws.Close()
	_ = tnc.Flush()
	select {
	case err := <-tviol:
		t.Errorf("the console as tools: %v", err)
	default:
	}

	// What the users may not do.
	// A denied request fails only when it times out: keep it short (allowed ones answer in milliseconds).
	short := func() context.Context {
		c, cancel := context.WithTimeout(t.Context(), time.Second)
		t.Cleanup(cancel)
		return c
	}
	rnc, recjs, rviol := conn("recorder", rolePW)
	if err := recjs.DeleteStream(short(), sc.Name); err == nil {
		t.Error("the recorder deleted the stream")
	}
	if rs, err := recjs.Stream(short(), sc.Name); err != nil {
		t.Errorf("the recorder cannot read the stream's info: %v", err)
	} else if err := rs.Purge(short()); err == nil {
		t.Error("the recorder purged the stream")
	}
	// Each role's partition consumers are its own: another role can neither
	// open, pull, change nor delete them, nor acknowledge their messages.
	part := sc.Subjects().Partition(tok)
	for _, other := range []string{analytics.RoleName, moderation.RoleName} {
		name := subscribers.PartitionConsumer(other, part)
		if err := recjs.DeleteConsumer(short(), sc.Name, name); err == nil {
			t.Errorf("the recorder deleted %s", name)
		}
		if _, err := recjs.Consumer(short(), sc.Name, name); err == nil {
			t.Errorf("the recorder opened %s", name)
		}
		if _, err := recjs.CreateOrUpdateConsumer(short(), sc.Name, jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckAllPolicy}); err == nil {
			t.Errorf("the recorder changed %s", name)
		}
		if _, err := rnc.Request("$JS.API.CONSUMER.MSG.NEXT."+sc.Name+"."+name, []byte(`{"batch":1,"no_wait":true}`), time.Second); err == nil {
			t.Errorf("the recorder pulled from %s", name)
		}
		if _, err := tjs.Consumer(short(), sc.Name, name); err == nil {
			t.Errorf("tools opened %s", name)
		}
	}
	if _, err := recjs.Consumer(short(), sc.Name, subscribers.PartitionConsumer(recording.RoleName, part)); err != nil {
		t.Errorf("the recorder cannot open its own partition consumer: %v", err)
	}
	// An acknowledgement of another role's partition is refused by the
	// server (the subject names the consumer).
	drainViolations(rviol)
	_ = rnc.Publish("$JS.ACK."+sc.Name+"."+subscribers.PartitionConsumer(analytics.RoleName, part)+".1.1.1.1.0.0", []byte("+ACK"))
	_ = rnc.Flush()
	select {
	case err := <-rviol:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("acknowledging analytics' partition: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("the recorder acknowledged a message of analytics' partition consumer")
	}
	_ = rnc.Publish(sc.Prefix+".x.events.analytics", []byte("forged"))
	_ = rnc.Flush()
	select {
	case err := <-rviol:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("forged analytics event: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("the recorder published an analytics event")
	}
	if err := tjs.DeleteStream(short(), sc.Name); err == nil {
		t.Error("tools deleted the stream")
	}
	if _, err := rjs.Publish(short(), sc.Prefix+".x.lifecycle", []byte("x")); err != nil {
		// The receiver may publish anything under the prefix (the payload
		// is refused by the roles, not by the server).
		t.Errorf("the receiver under the prefix: %v", err)
	}
	// All still there, seen by the tools user.
	s, err := tjs.Stream(t.Context(), sc.Name)
	if err != nil {
		t.Fatal(err)
	}
	// Distinct names: the server lists consumers in pages by offset, and
	// a reader's ordered consumer deleted between two pages makes the next
	// page repeat one.
	var names []string
	for n := range s.ListConsumers(t.Context()).Info() {
		if n.Config.Durable != "" && !slices.Contains(names, n.Name) {
			names = append(names, n.Name)
		}
	}
	if want := len(components) * sc.Partitions; len(names) != want {
		t.Errorf("%d durable consumers on the stream, want %d (the roles' partitions): %v", len(names), want, names)
	}
}

// drainViolations empties a connection's error channel of what came before.
func drainViolations(ch chan error) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// checkLongRecording stores a call of 80 s (a mixed stream of 4,000
// frames), waits for the recorder (Store both) to write it, and reads its
// files back from the Object Store as tools and as each role: whole and
// byte for byte what the recorder wrote to disk. An object over 2 MiB needs
// flow control ($JS.FC.>) to download.
func checkLongRecording(t *testing.T, rjs, tjs jetstream.JetStream, sc broker.StreamConfig, dataDir, bucket, rolePW string,
	conn func(user, pw string) (*nats.Conn, jetstream.JetStream, chan error)) {
	t.Helper()
	const id, frames = "long:call+1", 4000 // escaped in subjects, folders and object names
	tok := codec.EncodeToken(id)
	subj := sc.Subjects()
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	publish := func(subject string, v any) {
		b, err := codec.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rjs.PublishAsync(subject, b); err != nil {
			t.Fatal(err)
		}
	}
	life := func(typ string) *codec.Lifecycle {
		return &codec.Lifecycle{V: 1, Call: id, Type: typ, Stream: codec.StreamAudio, Connection: "long", Receiver: "test",
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, At: t0, Frames: map[string]uint64{}}
	}
	publish(subj.Lifecycle(tok), life(codec.LifecycleStarted))
	pcm := make([]byte, 640)
	for i := range frames {
		for j := range pcm {
			pcm[j] = byte(i*7 + j)
		}
		ts := t0.Add(time.Duration(i) * 20 * time.Millisecond)
		publish(subj.Audio(tok, codec.MixedToken), &codec.Frame{V: 1, Call: id, Seq: uint64(i + 1), Timestamp: ts, ReceivedAt: ts,
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: pcm})
		if i%500 == 499 { // a bounded window: the client stalls past its own limit
			select {
			case <-rjs.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				t.Fatal("frames not stored")
			}
		}
	}
	publish(subj.Lifecycle(tok), life(codec.LifecycleEnded))
	select {
	case <-rjs.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("the long call was not stored")
	}
	conformance.WaitFor(t, "the long call recorded", func() bool {
		return len(conformance.Events(t, tjs, sc.StreamRef, id, "recording")) == 1
	})
	for _, file := range []string{"_mixed.wav", "mix.wav"} {
		want, err := os.ReadFile(filepath.Join(dataDir, "recordings", string(tok), file))
		if err != nil {
			t.Fatal(err)
		}
		if len(want) < 2<<20 {
			t.Fatalf("%s is %d bytes: not past the 2 MiB a download needs flow control for", file, len(want))
		}
		for _, user := range []string{"tools", "recorder", "analytics", "moderator"} {
			_, js, _ := conn(user, rolePW)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			store, err := js.ObjectStore(ctx, bucket)
			if err != nil {
				cancel()
				t.Fatalf("%s opens the bucket: %v", user, err)
			}
			got, err := store.GetBytes(ctx, string(tok)+"/"+file)
			cancel()
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s reads %s: %d of %d bytes, equal %v, %v", user, file, len(got), len(want), bytes.Equal(got, want), err)
			}
		}
	}
}
