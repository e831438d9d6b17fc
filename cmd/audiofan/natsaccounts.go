package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/template"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/subscribers"
)

// natsAccountsSettings are what the NATS users' permissions depend on.
type natsAccountsSettings struct {
	Stream     broker.StreamRef
	Partitions int `env:"AUDIOFAN_PARTITIONS" envDefault:"32" help:"partitions of the stream (the receivers' setting): each role's consumers are named by them"`
	Shards     int `env:"AUDIOFAN_STREAM_SHARDS" envDefault:"1" help:"the bus's shards (the receivers' setting): more than one needs the account's subject mapping, which is written then"`
	// own are the components' own settings (their buckets), in their order.
	own []subscribers.Settings
}

func (s *natsAccountsSettings) parts() []any { return asParts(s.own) }

func (s *natsAccountsSettings) validate() error {
	if err := s.layout().Validate(); err != nil {
		return err
	}
	return s.Stream.Validate()
}

func (s *natsAccountsSettings) layout() broker.Layout {
	return broker.Layout{Stream: s.Stream.Name, Prefix: s.Stream.Prefix, Partitions: s.Partitions, Shards: s.Shards}
}

var natsAccountsCommand = command{
	name:    "nats-accounts",
	summary: "print the NATS accounts and permissions of every part (deploy/nats/accounts.conf) for these settings",
	config:  func() any { return &natsAccountsSettings{own: ownSettings()} },
	run: func(_ context.Context, cfg any, _ *slog.Logger, stdout io.Writer) error {
		return writeNATSAccounts(stdout, *cfg.(*natsAccountsSettings))
	},
}

// natsUser is one user of the accounts file.
type natsUser struct {
	Name, Password string
	Allow, Deny    []string
	Subscribe      []string
}

// writeNATSAccounts writes the accounts block of nats.conf. Each subscriber
// role may use only its own partition consumers: their names are fixed
// (<role>-p<n>), so the other roles' can be denied by name, the one thing
// the per-call design's names made impossible.
func writeNATSAccounts(w io.Writer, s natsAccountsSettings) error {
	if len(s.own) != len(components) {
		return fmt.Errorf("nats-accounts: settings for %d roles, want %d", len(s.own), len(components))
	}
	stream, prefix := s.Stream.Name, s.Stream.Prefix
	// The bus's streams: the shards, and the single stream a move to them
	// retires. Moving the bus (`audiofan reshard`) is an operator's step,
	// run with the account's own credentials, not a part's.
	streams := s.layout().BusStreams()
	// Nobody but the receiver may change the stream, and nobody may
	// administer JetStream.
	admin := []string{
		"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.SNAPSHOT.>",
		"$JS.API.STREAM.RESTORE.>", "$JS.API.STREAM.PEER.REMOVE.>", "$JS.API.ACCOUNT.PURGE.>",
		"$JS.API.META.>", "$JS.API.SERVER.>",
	}
	for _, name := range streams {
		admin = append(admin, "$JS.API.STREAM.CREATE."+name, "$JS.API.STREAM.UPDATE."+name, "$JS.API.STREAM.PURGE."+name,
			"$JS.API.STREAM.MSG.DELETE."+name)
	}
	// consumers are the API subjects of a role's consumers, every verb, on
	// any stream (a partition's shard, or one retired by a move): its
	// partition consumers and the dispatch consumer of the design before
	// them.
	consumers := func(role string) []string {
		names := []string{role}
		for p := range s.Partitions {
			names = append(names, subscribers.PartitionConsumer(role, p))
		}
		var out []string
		for _, n := range names {
			out = append(out, "$JS.API.CONSUMER.*.*."+n, "$JS.API.CONSUMER.*.*."+n+".>", "$JS.API.CONSUMER.*.*.*."+n)
		}
		return out
	}
	acks := func(role string) []string {
		out := []string{"$JS.ACK.*." + role + ".>"}
		for p := range s.Partitions {
			out = append(out, "$JS.ACK.*."+subscribers.PartitionConsumer(role, p)+".>")
		}
		return out
	}
	var users []natsUser
	// The receiver provisions the bus: its streams as AUDIOFAN_STREAM_SHARDS
	// lays it out.
	rx := natsUser{Name: "receiver", Password: "$NATS_RECEIVER_PASSWORD",
		Allow: []string{prefix + ".>", "$JS.API.INFO", "$JS.API.STREAM.NAMES"},
		// Outbound audio to relay, sharded or not (the mapping probe at
		// start comes back on them too).
		Subscribe: []string{"_INBOX.>", prefix + ".*." + string(broker.KindOutbound), prefix + ".*.*." + string(broker.KindOutbound)}}
	for _, name := range streams {
		rx.Allow = append(rx.Allow, "$JS.API.STREAM.INFO."+name, "$JS.API.STREAM.CREATE."+name, "$JS.API.STREAM.UPDATE."+name)
		if s.layout().Sharded() && name != stream {
			// Spreading the shards' leaders over the nodes.
			rx.Allow = append(rx.Allow, "$JS.API.STREAM.LEADER.STEPDOWN."+name)
		}
	}
	users = append(users, rx)
	for i, r := range components {
		members := subscribers.MembersSubject(stream, r.Role)
		u := natsUser{Name: r.Command, Password: "$NATS_ROLE_PASSWORD",
			Allow: []string{prefix + ".*.events." + r.Role, "$JS.API.>", "$JS.FC.>", members,
				"$KV." + subscribers.StateBucket(stream, r.Role) + ".>"},
			Deny:      append([]string{}, admin...),
			Subscribe: []string{"_INBOX.>", members}}
		u.Allow = append(u.Allow, acks(r.Role)...)
		if r.Publishes != nil {
			u.Allow = append(u.Allow, r.Publishes(s.own[i], s.Stream.Published())...)
		}
		for _, o := range components {
			if o.Role != r.Role {
				u.Deny = append(u.Deny, consumers(o.Role)...)
			}
		}
		users = append(users, u)
	}
	tools := natsUser{Name: "tools", Password: "$NATS_ROLE_PASSWORD", Allow: []string{"$JS.API.>", "$JS.FC.>"},
		Deny: append([]string{}, admin...), Subscribe: []string{"_INBOX.>", prefix + ".>"}}
	for _, r := range components {
		tools.Deny = append(tools.Deny, consumers(r.Role)...)
	}
	users = append(users, tools)
	var commands []string
	for _, c := range components {
		commands = append(commands, c.Command)
	}
	var mappings []broker.Mapping
	if s.layout().Sharded() {
		mappings = broker.Mappings(prefix, s.Partitions)
	}
	return accountsTemplate.Execute(w, struct {
		Settings natsAccountsSettings
		Roles    string
		Users    []natsUser
		Mappings []broker.Mapping
	}{s, strings.Join(commands, ", "), users, mappings})
}

var accountsTemplate = template.Must(template.New("accounts").Funcs(template.FuncMap{
	"list": func(xs []string) string {
		q := make([]string, len(xs))
		for i, x := range xs {
			q[i] = `"` + x + `"`
		}
		return "[\n" + indent(q, "              ") + "\n            ]"
	},
}).Parse(`# Generated by ` + "`audiofan nats-accounts`" + ` for stream {{.Settings.Stream.Name}}, prefix {{.Settings.Stream.Prefix}},
# {{.Settings.Partitions}} partitions, {{.Settings.Shards}} shard(s). Do not edit: run it again (with the same AUDIOFAN_ settings as the
# deployment) and replace this file. deploy/nats/nats.conf includes it.
#
# Who may do what.
# - receiver: publishes under the prefix and provisions the stream, nothing else.
# - {{.Roles}}: publish their own events, their replicas' heartbeats, their own
#   partition checkpoints and buckets (the moderator also outbound audio), and use the JetStream
#   API for their consumers. None may create, change, purge or delete the stream, nor use or
#   acknowledge another role's partition consumers (<role>-p<n>): those are denied by name.
# - tools (sim, tap, the console): read the bus, may not change the stream or touch a role's
#   consumers.
# Change the passwords (or move to NKeys/JWTs) before exposing NATS.
{{- if .Mappings}}
#
# The mappings insert each call's partition into what is published (<prefix>.<call>.… is
# delivered as <prefix>.<partition>.<call>.…), so each shard stream binds its partitions. They
# depend on AUDIOFAN_PARTITIONS only; every node of the cluster needs them.
{{- end}}
accounts {
  AUDIOFAN: {
    jetstream: enabled
{{- if .Mappings}}
    mappings: {
{{- range .Mappings}}
      "{{.Source}}": "{{.Destination}}"
{{- end}}
    }
{{- end}}
    users: [
{{- range .Users}}
      { user: {{.Name}}, password: {{.Password}}, permissions: {
          publish: {
            allow: {{list .Allow}}
{{- if .Deny}}
            deny: {{list .Deny}}
{{- end}}
          }
          subscribe: {{list .Subscribe}} } }
{{- end}}
    ]
  }
  SYS: { users: [ { user: admin, password: $NATS_ROLE_PASSWORD } ] }
}
system_account: SYS
`))

func indent(lines []string, pad string) string {
	var b strings.Builder
	for i, l := range lines {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(pad + l)
	}
	return b.String()
}
