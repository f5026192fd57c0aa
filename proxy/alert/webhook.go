package alert

import (
	"encoding/json"
	"net/http"

	"github.com/portcullis-oci/portcullis/proxy"
)

// body is the JSON every receiver type carries: the event as the proxy
// records it, with the delivery id (the same on every retry) and source.
type body struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	proxy.Event
}

func encodeBody(e proxy.Event, id, source string) ([]byte, error) {
	return json.Marshal(body{ID: id, Source: source, Event: e})
}

func encodeWebhook(e proxy.Event, id, source string) (payload, error) {
	b, err := encodeBody(e, id, source)
	if err != nil {
		return payload{}, err
	}
	return payload{body: b, header: http.Header{"Content-Type": {"application/json"}}}, nil
}
