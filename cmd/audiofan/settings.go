package main

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"

	"github.com/caarlos0/env/v11"
)

// setting is one environment variable of a settings struct.
type setting struct {
	field, name, def, help string
}

// composite settings are a command's own struct and more: the roles' own
// settings, each its own struct, which the command cannot name as fields
// because the list of roles is data (components). They are parsed,
// validated and listed like fields.
type composite interface{ parts() []any }

// partsOf are cfg and its parts.
func partsOf(cfg any) []any {
	out := []any{cfg}
	if c, ok := cfg.(composite); ok {
		out = append(out, c.parts()...)
	}
	return out
}

// settingsOf lists the environment settings of cfg (a pointer to a settings
// struct, and its parts) from the same struct tags the parser reads, so help
// and error messages cannot drift from the code. A variable read by two
// parts is listed once, as the first names it.
func settingsOf(cfg any) []setting {
	var out []setting
	seen := map[string]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := f.Tag.Get("env")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if name == "" || seen[name] {
				continue
			}
			seen[name] = true
			out = append(out, setting{field: f.Name, name: name, def: f.Tag.Get("envDefault"), help: f.Tag.Get("help")})
		}
	}
	for _, p := range partsOf(cfg) {
		walk(reflect.TypeOf(p).Elem())
	}
	return out
}

// parseSettings fills cfg and its parts from the environment and validates
// them. Errors name the variable, not the Go field.
func parseSettings(cfg any) error {
	parts := partsOf(cfg)
	for _, p := range parts {
		if err := parseOne(p); err != nil {
			return err
		}
	}
	for _, p := range parts {
		var err error
		switch v := p.(type) {
		case interface{ validate() error }:
			err = v.validate()
		case interface{ Validate() error }:
			err = v.Validate()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseOne(cfg any) error {
	if err := env.Parse(cfg); err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return fmt.Errorf("settings: %w", err)
		}
		var msgs []string
		for _, e := range agg.Errors {
			var pe env.ParseError
			if errors.As(e, &pe) {
				for _, s := range settingsOf(cfg) {
					if s.field == pe.Name {
						e = fmt.Errorf("%s: %w", s.name, pe.Err)
						break
					}
				}
			}
			msgs = append(msgs, e.Error())
		}
		return fmt.Errorf("settings: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// printSettings lists every environment setting of cfg with its default.
func printSettings(w io.Writer, cfg any) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  VARIABLE\tDEFAULT\tMEANING\n")
	for _, s := range settingsOf(cfg) {
		def := s.def
		if def == "" {
			def = "(empty)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.name, def, s.help)
	}
	_ = tw.Flush()
}
