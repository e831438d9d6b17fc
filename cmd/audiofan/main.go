// Command audiofan is the ACS audio fan-out broker: one binary whose
// subcommand picks the role. `audiofan serve` runs everything in one process
// on an embedded NATS server; the other subcommands run one role each against
// NATS_URL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// command is one subcommand: its settings (a struct read from the environment)
// and what it runs.
type command struct {
	name    string
	summary string
	// config returns a fresh settings struct for help and parsing.
	config func() any
	// flags registers the role's own flags (beyond settings), if any.
	flags func(fs *flag.FlagSet, cfg any)
	run   func(ctx context.Context, cfg any, log *slog.Logger, stdout io.Writer) error
	// service: it runs until stopped (a server, not a tool), and gives
	// memory back when it goes idle after a burst (releaseWhenIdle).
	service bool
}

// commands are the subcommands, in the order help lists them: one per
// component after the receiver.
func commands() []command {
	out := []command{serveCommand, receiverCommand}
	for _, c := range components {
		out = append(out, componentCommand(c))
	}
	return append(out, consoleCommand, tapCommand, simCommand, redriveCommand, reshardCommand, healthCommand, natsAccountsCommand, versionCommand)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "audiofan: Azure Communication Services audio fan-out over NATS JetStream\n\nUsage: audiofan <command> [flags]\n\nCommands:\n")
	width := 0
	cmds := commands()
	for _, r := range cmds {
		width = max(width, len(r.name))
	}
	for _, r := range cmds {
		fmt.Fprintf(w, "  %-*s  %s\n", width, r.name, r.summary)
	}
	fmt.Fprintf(w, "\nSettings come from the environment; `audiofan <command> --help` lists each with its default.\n")
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var r *command
	cmds := commands()
	for i := range cmds {
		if cmds[i].name == args[0] {
			r = &cmds[i]
		}
	}
	if r == nil {
		fmt.Fprintf(stderr, "audiofan: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	cfg := r.config()
	fs := flag.NewFlagSet("audiofan "+r.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if r.flags != nil {
		r.flags(fs, cfg)
	}
	fs.Usage = func() {
		fmt.Fprintf(stdout, "audiofan %s: %s\n\n", r.name, r.summary)
		if hasFlags(fs) {
			fmt.Fprintf(stdout, "Flags:\n")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "Settings (environment):\n")
		printSettings(stdout, cfg)
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "audiofan %s: unexpected argument %q\n", r.name, fs.Arg(0))
		return 2
	}
	if err := parseSettings(cfg); err != nil {
		fmt.Fprintf(stderr, "audiofan %s: %v\n", r.name, err)
		return 2
	}
	log, err := newLogger(stderr, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "audiofan %s: %v\n", r.name, err)
		return 2
	}

	// First signal: drain. Second: exit now.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case sig := <-sigs:
			log.Info("signal: stopping; a second signal exits at once", "signal", sig.String())
			cancel()
		case <-finished:
			return
		}
		select {
		case <-sigs:
			log.Error("second signal: exiting without draining")
			os.Exit(1)
		case <-finished:
		}
	}()
	if r.service {
		limitMemory(log)
		releaseWhenIdle(ctx, log)
	}
	if err := r.run(ctx, cfg, log, stdout); err != nil {
		// One line, for people and scripts alike.
		fmt.Fprintf(stderr, "audiofan %s: %v\n", r.name, err)
		return 1
	}
	return 0
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// LogSettings is embedded in every role's settings.
type LogSettings struct {
	LogLevel  string `env:"AUDIOFAN_LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat string `env:"AUDIOFAN_LOG_FORMAT" envDefault:"text" help:"text or json"`
}

func (l LogSettings) logSettings() LogSettings { return l }

func newLogger(w io.Writer, cfg any) (*slog.Logger, error) {
	ls := LogSettings{LogLevel: "info", LogFormat: "text"}
	if h, ok := cfg.(interface{ logSettings() LogSettings }); ok {
		ls = h.logSettings()
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(ls.LogLevel)); err != nil {
		return nil, fmt.Errorf("AUDIOFAN_LOG_LEVEL: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(ls.LogFormat) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("AUDIOFAN_LOG_FORMAT %q: want text or json", ls.LogFormat)
}
