package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"

	"github.com/gannetmq/gannet/apikey"
)

const apikeyUsage = `usage: gannet apikey add --file FILE --name NAME --role read|write
       gannet apikey delete --file FILE --name NAME
       gannet apikey list --file FILE

Manages the keys of the HTTP API, which the broker reads with
--api-key-file (and again on SIGHUP). A read key may GET /api/v1/ (and
/metrics with --metrics-auth); a write key may do everything.

  add     makes a key, adds it to FILE (created, mode 0600, when missing)
          and prints the key, alone, on standard output. Only a salted
          hash of it is stored: it cannot be shown again.
  delete  removes the key named NAME.
  list    prints each key's name and role (never a key).
`

// runAPIKey runs `gannet apikey` with args (those after "apikey") and
// returns the exit code: 0 on success, 1 when the operation fails (a
// name already taken, no such key, a file that cannot be read or
// written), 2 for a usage error.
func runAPIKey(args []string, stdout, stderr io.Writer) int {
	err := apiKeyCmd(args, stdout)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, apikeyUsage)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "gannet apikey: %v\n\n%s", err, apikeyUsage)
		return 2
	}
	fmt.Fprintf(stderr, "gannet apikey: %v\n", err)
	return 1
}

func apiKeyCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"want add, delete or list"}
	}
	op := args[0]
	if op == "-h" || op == "--help" || op == "help" {
		return flag.ErrHelp
	}
	flags := flag.NewFlagSet("gannet apikey "+op, flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	file := flags.String("file", "", "")
	name := flags.String("name", "", "")
	role := flags.String("role", "", "")
	if err := flags.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	set := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case flags.NArg() > 0:
		return usageError{fmt.Sprintf("unexpected argument %q", flags.Arg(0))}
	case *file == "":
		return usageError{"--file is needed"}
	}
	switch op {
	case "add":
		if *name == "" || *role == "" {
			return usageError{"add wants --name and --role"}
		}
		r, err := apikey.ParseRole(*role)
		if err != nil {
			return usageError{"--role must be read or write, got " + fmt.Sprintf("%q", *role)}
		}
		if err := apikey.CheckName(*name); err != nil {
			return usageError{"--name: " + trimPkg(err)}
		}
		key, err := apikey.Add(*file, *name, r)
		if err != nil {
			return errors.New(trimPkg(err))
		}
		// The key alone: scripts read it from here.
		_, err = fmt.Fprintln(stdout, key)
		return err
	case "delete":
		if *name == "" || set["role"] {
			return usageError{"delete wants --name (and no --role)"}
		}
		err := apikey.Delete(*file, *name)
		switch {
		case errors.Is(err, apikey.ErrNotFound):
			return fmt.Errorf("no key named %q in %s", *name, *file)
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("%s does not exist", *file)
		case err != nil:
			return errors.New(trimPkg(err))
		}
		return nil
	case "list":
		if set["name"] || set["role"] {
			return usageError{"list takes --file only"}
		}
		keys, err := apikey.List(*file)
		if err != nil {
			return errors.New(trimPkg(err))
		}
		for _, k := range keys {
			if _, err := fmt.Fprintf(stdout, "%s\t%s\n", k.Name, k.Role); err != nil {
				return err
			}
		}
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q: want add, delete or list", op)}
}

// trimPkg is err's message without the package prefix.
func trimPkg(err error) string {
	const p = "apikey: "
	m := err.Error()
	if len(m) > len(p) && m[:len(p)] == p {
		return m[len(p):]
	}
	return m
}
