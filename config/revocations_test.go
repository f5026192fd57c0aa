package config

import (
	"strings"
	"testing"
)

func TestRevocationsAndRefreshAheadConfig(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", "", "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Revocations.MaxEntries != DefaultRevocationEntries || c.RefreshAhead.Concurrency != DefaultRefreshConcurrency || c.RefreshAhead.Entries != DefaultRefreshEntries {
		t.Errorf("defaults: %+v %+v", c.Revocations, c.RefreshAhead)
	}
	c, err = Parse([]byte(doc("", "", "", "revocations: {max_entries: 7}\nrefresh_ahead: {concurrency: 2, entries: 9}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Revocations.MaxEntries != 7 || c.RefreshAhead.Concurrency != 2 || c.RefreshAhead.Entries != 9 {
		t.Errorf("set: %+v %+v", c.Revocations, c.RefreshAhead)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"revocations: {max_entries: -1}", "revocations.max_entries: must be positive"},
		{"refresh_ahead: {concurrency: -1}", "refresh_ahead.concurrency: must be positive"},
		{"refresh_ahead: {entries: -1}", "refresh_ahead.entries: must be positive"},
		// The proxy writes the state file: it must not be the file it
		// watches, however the two are spelled.
		{"revocations: {file: revoked.json, state_file: ./revoked.json}", "revocations.state_file: must not be the watched file"},
	} {
		_, err := Parse([]byte(doc("", "", "", tc.yaml+"\n")), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := Parse([]byte(doc("", "", "", "revocations: {file: revoked.json, state_file: state.json}\n")), "p.yaml"); err != nil && strings.Contains(err.Error(), "state_file") {
		t.Errorf("distinct files: %v", err)
	}
}
