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

// settingsOf lists the environment settings of cfg (a pointer to a settings
// struct) from the same struct tags the parser reads, so help and error
// messages cannot drift from the code.
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
	walk(reflect.TypeOf(cfg).Elem())
	return out
}

// parseSettings fills cfg from the environment and validates it. Errors name
// the variable, not the Go field.
func parseSettings(cfg any) error {
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
	if v, ok := cfg.(interface{ validate() error }); ok {
		return v.validate()
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
