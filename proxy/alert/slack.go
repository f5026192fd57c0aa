package alert

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/portcullis-oci/portcullis/proxy"
)

// slackTextLimit keeps a section's text under Slack's 3000-character cap.
const slackTextLimit = 2900

var slackIcons = map[proxy.EventKind]string{
	proxy.EventDeny:          ":no_entry:",
	proxy.EventWouldDeny:     ":warning:",
	proxy.EventFailClosed:    ":x:",
	proxy.EventDrift:         ":rotating_light:",
	proxy.EventRevocationHit: ":no_entry_sign:",
	proxy.EventReloadFailed:  ":x:",
}

// slackEscape escapes the three characters Slack's mrkdwn gives meaning
// to, so text from clients and upstreams cannot mention a channel
// (<!channel>) or forge a link.
var slackEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type slackBlock struct {
	Type     string      `json:"type"`
	Text     *slackText  `json:"text,omitempty"`
	Elements []slackText `json:"elements,omitempty"`
}

type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

// encodeSlack writes an incoming-webhook message: "text" for
// notifications and clients without blocks, a section with the same text
// and a context line with the event's coordinates.
func encodeSlack(e proxy.Event, id, _ string) (payload, error) {
	icon := slackIcons[e.Kind]
	if icon == "" {
		icon = ":eyes:"
	}
	text := icon + " *" + string(e.Kind) + "* " + slackEscape.Replace(truncate(e.Message, slackTextLimit))
	var ctx []string
	if d := e.Decision; d != nil {
		if d.Boundary != "" {
			ctx = append(ctx, "boundary "+d.Boundary)
		}
		if d.Mode != "" {
			ctx = append(ctx, "mode "+string(d.Mode))
		}
		if d.Client != "" {
			ctx = append(ctx, "client "+d.Client)
		}
	}
	ctx = append(ctx, e.Time.UTC().Format("2006-01-02T15:04:05Z"), "id "+id)
	m := slackMessage{
		Text: text,
		Blocks: []slackBlock{
			{Type: "section", Text: &slackText{Type: "mrkdwn", Text: text}},
			{Type: "context", Elements: []slackText{{Type: "mrkdwn", Text: slackEscape.Replace(truncate(strings.Join(ctx, " · "), slackTextLimit))}}},
		},
	}
	b, err := json.Marshal(m)
	if err != nil {
		return payload{}, err
	}
	return payload{body: b, header: http.Header{"Content-Type": {"application/json"}}}, nil
}
