package proxy

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/portcullis-oci/portcullis/verify"
)

type eventRecorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *eventRecorder) Emit(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *eventRecorder) kinds() []EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []EventKind
	for _, e := range r.events {
		out = append(out, e.Kind)
	}
	return out
}

// TestDecisionsBecomeEvents: a denial, a would-be denial and a failure to
// decide each reach the event sink as their own kind; an allow does not.
func TestDecisionsBecomeEvents(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	for _, c := range []struct {
		name string
		v    *fakeVerifier
		want EventKind
	}{
		{"deny", denyAll(verify.ModeEnforce), EventDeny},
		{"warn", denyAll(verify.ModeWarn), EventWouldDeny},
		{"fail closed", failing(errors.New("evidence unreachable")), EventFailClosed},
		{"allow", allowAll(), ""},
	} {
		rec := &eventRecorder{}
		p, _ := newTestProxy(t, reg.srv.URL, c.v, WithEventSink(rec))
		do(p, http.MethodGet, manifestPath("acme/app", img.digest.String()))
		got := rec.kinds()
		switch {
		case c.want == "" && len(got) != 0:
			t.Errorf("%s: events %v, want none", c.name, got)
		case c.want != "" && (len(got) != 1 || got[0] != c.want):
			t.Errorf("%s: events %v, want [%s]", c.name, got, c.want)
		case c.want != "" && !strings.Contains(rec.events[0].Message, img.digest.String()):
			t.Errorf("%s: message %q does not name the digest", c.name, rec.events[0].Message)
		}
	}
}
