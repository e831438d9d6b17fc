package main

import (
	"fmt"
	"io"
	"reflect"
	"text/tabwriter"

	"github.com/caarlos0/env/v11"
)

// parseSettings fills cfg (a pointer to a settings struct) from the environment.
func parseSettings(cfg any) error {
	if err := env.Parse(cfg); err != nil {
		return fmt.Errorf("settings: %w", err)
	}
	if v, ok := cfg.(interface{ validate() error }); ok {
		return v.validate()
	}
	return nil
}

// printSettings lists every environment setting of cfg with its default and
// help, read from the same struct tags the parser uses, so the list cannot
// drift from the code.
func printSettings(w io.Writer, cfg any) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  VARIABLE\tDEFAULT\tMEANING\n")
	var walk func(t reflect.Type)
	seen := map[string]bool{}
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := f.Tag.Get("env")
			if name == "-" {
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
			def := f.Tag.Get("envDefault")
			if def == "" {
				def = "(empty)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", name, def, f.Tag.Get("help"))
		}
	}
	walk(reflect.TypeOf(cfg).Elem())
	_ = tw.Flush()
}
