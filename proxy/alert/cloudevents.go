package alert

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/portcullis-oci/portcullis/proxy"
)

// ceTypePrefix makes every event kind a reverse-DNS CloudEvents type.
const ceTypePrefix = "dev.portcullis."

// ceTypes names the CloudEvents type of each kind: decisions under
// "decision.", the others under their subsystem.
var ceTypes = map[proxy.EventKind]string{
	proxy.EventDeny:                     "decision.deny",
	proxy.EventWouldDeny:                "decision.would-deny",
	proxy.EventFailClosed:               "decision.fail-closed",
	proxy.EventDrift:                    "decision.drift",
	proxy.EventRevocationHit:            "revocation.hit",
	proxy.EventReloadFailed:             "reload.failed",
	proxy.EventWatchAbsent:              "watch.absent",
	proxy.EventWatchStale:               "watch.stale",
	proxy.EventWatchChanged:             "watch.changed",
	proxy.EventWatchUnreachable:         "watch.unreachable",
	proxy.EventTrustedRootRefreshFailed: "trusted-root.refresh-failed",
	proxy.EventTrustedRootUnavailable:   "trusted-root.unavailable",
}

// CloudEventType is the CloudEvents type an event of kind k is sent as.
func CloudEventType(k proxy.EventKind) string {
	if t, ok := ceTypes[k]; ok {
		return ceTypePrefix + t
	}
	return ceTypePrefix + "event." + string(k)
}

// encodeCloudEvent writes the HTTP binary content mode: the context
// attributes as ce-* headers, the data (the webhook body) as the request
// body with Content-Type application/json.
func encodeCloudEvent(e proxy.Event, id, source string) (payload, error) {
	data, err := encodeBody(e, id, source)
	if err != nil {
		return payload{}, err
	}
	ev := event.New(event.CloudEventsVersionV1)
	ev.SetID(id)
	ev.SetSource(source)
	ev.SetType(CloudEventType(e.Kind))
	ev.SetTime(e.Time)
	if d := e.Decision; d != nil && d.Digest != "" {
		ev.SetSubject(d.Upstream + "/" + d.Repository + "@" + d.Digest)
	}
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		return payload{}, err
	}
	if err := ev.Validate(); err != nil {
		return payload{}, fmt.Errorf("invalid cloudevent: %w", err)
	}
	// The SDK writes into a request; only its headers and body are kept,
	// the alert's own client sends them.
	req, err := http.NewRequest(http.MethodPost, "http://cloudevent.invalid/", nil)
	if err != nil {
		return payload{}, err
	}
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&ev), req); err != nil {
		return payload{}, err
	}
	var b []byte
	if req.Body != nil {
		if b, err = io.ReadAll(req.Body); err != nil {
			return payload{}, err
		}
	}
	return payload{body: bytes.Clone(b), header: req.Header}, nil
}
