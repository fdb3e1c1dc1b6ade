package server

// The dashboard: a single page in plain HTML, CSS and JavaScript, embedded
// in the binary (ui/) so that it needs no build step, no files beside the
// binary and nothing from the internet. It holds no data of its own: the
// page reads and changes the broker through the admin API, with the API
// key the operator types in, so / and /ui/ are open like /healthz
// (guardHTTP in apiauth.go leaves every path outside /api/ alone).
//
// Every answer carries a Content-Security-Policy that lets the page load
// only its own files and call only its own origin: no inline script or
// style, no frames, no form posted elsewhere. Files are revalidated by
// ETag (a hash of the embedded bytes), so a new binary's page is never
// served stale from a browser's cache.

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed ui
var uiFiles embed.FS

// uiPolicy is the Content-Security-Policy of the dashboard's answers.
const uiPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// uiFile is one embedded file, ready to serve.
type uiFile struct {
	body  []byte
	ctype string
	etag  string
}

// uiTypes are the content types of the files in ui/, by extension; a file
// of another kind is not served.
var uiTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// loadUI reads the embedded files once; a broken embed is a build
// mistake, hence the panic.
func loadUI() map[string]*uiFile {
	files := make(map[string]*uiFile)
	err := fs.WalkDir(uiFiles, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ctype, ok := uiTypes[path.Ext(p)]
		if !ok {
			return nil
		}
		b, err := uiFiles.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		files[strings.TrimPrefix(p, "ui/")] = &uiFile{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil || files["index.html"] == nil {
		panic("BUG: the embedded dashboard is broken: " + fmt.Sprint(err))
	}
	return files
}

// uiRoutes serves the dashboard: GET / is the page, GET /ui/NAME its
// files.
func (s *Server) uiRoutes(mux *http.ServeMux) {
	files := loadUI()
	serve := func(w http.ResponseWriter, r *http.Request, f *uiFile) {
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		h.Set("Content-Security-Policy", uiPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, files["index.html"])
	})
	mux.HandleFunc("GET /ui/{name}", func(w http.ResponseWriter, r *http.Request) {
		f := files[r.PathValue("name")]
		if f == nil {
			http.NotFound(w, r)
			return
		}
		serve(w, r, f)
	})
}
