package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// adminKey makes an API key file holding one write key (which may also
// read) with `gannet apikey add`, and returns the file and the key.
func adminKey(bin, dir string) (file, key string, err error) {
	file = filepath.Join(dir, "api-keys")
	out, err := exec.Command(bin, "apikey", "add", "--file", file, "--name", "chaos", "--role", "write").Output()
	if err != nil {
		return "", "", fmt.Errorf("gannet apikey add: %w", err)
	}
	key = strings.TrimSpace(string(out))
	if key == "" || strings.ContainsAny(key, " \n") {
		return "", "", fmt.Errorf("gannet apikey add printed %q, not a key", out)
	}
	return file, key, nil
}

// admin calls one node's admin API.
type admin struct {
	key string
	hc  *http.Client
}

func newAdmin(key string) *admin { return &admin{key: key, hc: &http.Client{Timeout: 5 * time.Second}} }

// call sends method path (with body as JSON when not nil) to the node
// and decodes the answer into out; a status other than 200 or 202 is an
// error naming it.
func (a *admin) call(ctx context.Context, n *node, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.http+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s on %s: %w", method, path, n.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s on %s: %w", method, path, n.name, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("%s %s on %s: %s: %s", method, path, n.name, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s on %s: %w", method, path, n.name, err)
		}
	}
	return nil
}

// list reads every page of a list endpoint whose items are under field.
func list[T any](ctx context.Context, a *admin, n *node, path string, q url.Values, field string) ([]T, error) {
	var all []T
	q.Set("limit", "1000")
	for {
		var raw map[string]json.RawMessage
		if err := a.call(ctx, n, http.MethodGet, path+"?"+q.Encode(), nil, &raw); err != nil {
			return nil, err
		}
		var items []T
		if err := json.Unmarshal(raw[field], &items); err != nil {
			return nil, fmt.Errorf("GET %s on %s: %s: %w", path, n.name, field, err)
		}
		all = append(all, items...)
		var next string
		if c, ok := raw["next_cursor"]; ok {
			_ = json.Unmarshal(c, &next)
		}
		if next == "" {
			return all, nil
		}
		q.Set("cursor", next)
	}
}

type apiClient struct {
	ClientID string `json:"client_id"`
	Node     string `json:"node"`
}

type apiSubscription struct {
	ClientID string `json:"client_id"`
	Filter   string `json:"filter"`
	QoS      int    `json:"qos"`
	Node     string `json:"node"`
}

type apiRetained struct {
	Topic    string `json:"topic"`
	Payload  string `json:"payload"`
	Encoding string `json:"payload_encoding"`
}

type apiMember struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	LanesUp int    `json:"lanes_up"`
	Queued  int    `json:"queued"`
}

type apiDrain struct {
	Draining  bool   `json:"draining"`
	Phase     string `json:"phase"`
	AtStart   int    `json:"clients_at_start"`
	Connected int    `json:"clients_connected"`
	ToHand    int    `json:"sessions_to_hand_over"`
}

// clients lists the clients connected to n itself.
func (a *admin) clients(ctx context.Context, n *node) ([]apiClient, error) {
	return list[apiClient](ctx, a, n, "/api/v1/clients", url.Values{"scope": {"node"}}, "clients")
}

// subscriptions lists the subscriptions of n's own sessions.
func (a *admin) subscriptions(ctx context.Context, n *node) ([]apiSubscription, error) {
	return list[apiSubscription](ctx, a, n, "/api/v1/subscriptions", url.Values{"scope": {"node"}}, "subscriptions")
}

// retained lists n's retained messages under chaos/.
func (a *admin) retained(ctx context.Context, n *node) ([]apiRetained, error) {
	return list[apiRetained](ctx, a, n, "/api/v1/retained", url.Values{"filter": {"chaos/#"}}, "retained")
}

func (a *admin) members(ctx context.Context, n *node) ([]apiMember, error) {
	var v struct {
		Members []apiMember `json:"members"`
	}
	err := a.call(ctx, n, http.MethodGet, "/api/v1/cluster", nil, &v)
	return v.Members, err
}

// drain starts n's drain: no wait for a load balancer, every client at
// once.
func (a *admin) drain(ctx context.Context, n *node) error {
	return a.call(ctx, n, http.MethodPost, "/api/v1/node/drain", map[string]any{"lb_grace": "0s", "rate": 0}, nil)
}

func (a *admin) drainStatus(ctx context.Context, n *node) (apiDrain, error) {
	var d apiDrain
	err := a.call(ctx, n, http.MethodGet, "/api/v1/node/drain", nil, &d)
	return d, err
}
