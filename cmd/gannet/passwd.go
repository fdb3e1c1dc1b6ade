package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/gannetmq/gannet/auth"
)

const passwdUsage = `usage: gannet passwd [-H algorithm] [-I iterations] [-c] FILE USER
       gannet passwd [-H algorithm] [-I iterations] [-c] -b FILE USER PASSWORD
       gannet passwd -D FILE USER

Manages a password file in Mosquitto's format (user:hash lines), as
mosquitto_passwd does; the broker reads it with --password-file.

  -b  take the password from the command line (batch mode) instead of
      reading it twice from standard input
  -c  create the file, replacing any file there
  -D  delete USER from the file
  -H  hash algorithm: sha512-pbkdf2 (default, Mosquitto 2.0's), sha512
      (Mosquitto 1.6's), bcrypt, argon2id
  -I  cost: PBKDF2 iterations (default 101), bcrypt cost (default 10),
      argon2id passes (default 3); 0 means the default
`

// maxPasswordLine bounds a password read from standard input.
const maxPasswordLine = 64 << 10

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// runPasswd runs `gannet passwd` with args (those after "passwd") and
// returns the exit code: 0 on success, 1 when the operation fails (file
// missing without -c, user not found for -D, passwords that differ), 2
// for a usage error. It reads passwords from stdin, turning echo off when
// stdin is a terminal, and prompts on stderr. It never prints a password
// or a hash.
func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := passwd(args, stdin, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, passwdUsage)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "gannet passwd: %v\n\n%s", err, passwdUsage)
		return 2
	}
	fmt.Fprintf(stderr, "gannet passwd: %v\n", err)
	return 1
}

func passwd(args []string, stdin io.Reader, stderr io.Writer) error {
	flags := flag.NewFlagSet("gannet passwd", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	create := flags.Bool("c", false, "")
	del := flags.Bool("D", false, "")
	batch := flags.Bool("b", false, "")
	algName := flags.String("H", string(auth.DefaultHashAlgorithm), "")
	iterations := flags.Int("I", 0, "")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	set := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { set[f.Name] = true })
	rest := flags.Args()

	if *del {
		switch {
		case *create:
			return usageError{"-c and -D cannot be used together"}
		case *batch || set["H"] || set["I"]:
			return usageError{"-D takes no -b, -H or -I"}
		case len(rest) != 2:
			return usageError{"-D wants FILE USER"}
		}
		if err := auth.DeleteUser(rest[0], rest[1]); err != nil {
			if errors.Is(err, auth.ErrUserNotFound) {
				return fmt.Errorf("user %q not in %s", rest[1], rest[0])
			}
			return err
		}
		return nil
	}

	alg, err := auth.ParseHashAlgorithm(*algName)
	if err != nil {
		return usageError{"-H: " + strings.TrimPrefix(err.Error(), "auth: ")}
	}
	if err := auth.ValidHashCost(alg, *iterations); err != nil {
		return usageError{"-I: " + strings.TrimPrefix(err.Error(), "auth: cannot hash password: ")}
	}
	switch {
	case *batch && len(rest) != 3:
		return usageError{"-b wants FILE USER PASSWORD"}
	case !*batch && len(rest) != 2:
		if len(rest) == 3 {
			return usageError{"a password on the command line needs -b"}
		}
		return usageError{"want FILE USER"}
	}
	path, user := rest[0], rest[1]
	if !*create {
		// Fail before asking for a password the file cannot take.
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s does not exist (-c creates it)", path)
		}
	}

	var password []byte
	if *batch {
		password = []byte(rest[2])
	} else {
		if password, err = readPasswordTwice(stdin, stderr); err != nil {
			return err
		}
	}
	if len(password) == 0 {
		return errors.New("empty password")
	}
	encoded, err := auth.HashPassword(alg, password, *iterations)
	if err != nil {
		return err
	}
	if *create {
		return auth.CreatePasswordFile(path, user, encoded)
	}
	return auth.SetPassword(path, user, encoded)
}

// readPasswordTwice reads the password and its confirmation from stdin
// (without echo when stdin is a terminal) and returns it when both agree.
func readPasswordTwice(stdin io.Reader, prompt io.Writer) ([]byte, error) {
	read := lineReader(stdin)
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		read = func() ([]byte, error) {
			p, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(prompt)
			return p, err
		}
	}
	fmt.Fprint(prompt, "Password: ")
	first, err := read()
	if err != nil {
		return nil, fmt.Errorf("cannot read password: %w", err)
	}
	fmt.Fprint(prompt, "Reenter password: ")
	second, err := read()
	if err != nil {
		return nil, fmt.Errorf("cannot read password: %w", err)
	}
	if !bytes.Equal(first, second) {
		return nil, errors.New("passwords do not match")
	}
	return first, nil
}

// lineReader returns a function that reads one line from r, without its
// "\n" or "\r\n"; the last line may lack the terminator.
func lineReader(r io.Reader) func() ([]byte, error) {
	br := bufio.NewReader(r)
	return func() ([]byte, error) {
		var line []byte
		for {
			chunk, err := br.ReadSlice('\n')
			line = append(line, chunk...)
			if len(line) > maxPasswordLine+2 {
				return nil, fmt.Errorf("longer than %d bytes", maxPasswordLine)
			}
			if err == nil {
				break
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if errors.Is(err, io.EOF) && len(line) > 0 {
				break
			}
			if errors.Is(err, io.EOF) {
				return nil, errors.New("no password on standard input")
			}
			return nil, err
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		return bytes.TrimSuffix(line, []byte("\r")), nil
	}
}
