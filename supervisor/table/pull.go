package table

import (
	"os"
	"strings"

	"github.com/cvmd/cvmd/proto/config"
)

// Variables of the environment file (Cocos's /etc/cocos/environment) that
// configure pull mode (docs/agent.md). The object-store ones are AWS's
// standard names; Cocos itself wires none (it reads s3:// from GCS with
// Google's default credentials).
const (
	PullCACertsVar = "CVMD_PULL_CA_CERTS" // PEM file (or inline PEM) of extra roots
	// SystemRoots is the VM's root bundle, bound read-only into the
	// agent's view (it is too large for the agent's settings).
	SystemRoots = "/etc/ssl/certs/ca-certificates.crt"
)

// PullSettings reads pull mode's settings from Cocos's environment: extra
// TLS roots (CVMD_PULL_CA_CERTS; the agent adds the system bundle), S3 (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
// AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL) and GCS's
// S3-compatible XML API (GCS_HMAC_ACCESS_KEY_ID, GCS_HMAC_SECRET,
// GCS_ENDPOINT_URL). An environment that cannot be read gives defaults.
func PullSettings(in *SettingsInput) *config.PullSettings {
	s := &config.PullSettings{}
	if in.Environment == nil {
		return s
	}
	vars, source, err := in.Environment()
	if err != nil {
		in.log().Error("pull settings not read: remote sources use the defaults", "env", source, "err", err)
		return s
	}
	if v := vars[PullCACertsVar]; v != "" {
		pem := []byte(v)
		if !strings.Contains(v, "-----BEGIN") {
			if pem, err = os.ReadFile(v); err != nil {
				in.log().Error("pull CA certificates not read", "var", PullCACertsVar, "err", err)
			}
		}
		s.CaPem = pem
	}
	first := func(names ...string) string {
		for _, n := range names {
			if v := vars[n]; v != "" {
				return v
			}
		}
		return ""
	}
	s.S3 = &config.ObjectStoreSettings{
		Endpoint:        first("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
		Region:          first("AWS_REGION", "AWS_DEFAULT_REGION"),
		AccessKeyId:     vars["AWS_ACCESS_KEY_ID"],
		SecretAccessKey: vars["AWS_SECRET_ACCESS_KEY"],
		SessionToken:    vars["AWS_SESSION_TOKEN"],
	}
	s.Gcs = &config.ObjectStoreSettings{
		Endpoint:        vars["GCS_ENDPOINT_URL"],
		AccessKeyId:     vars["GCS_HMAC_ACCESS_KEY_ID"],
		SecretAccessKey: vars["GCS_HMAC_SECRET"],
	}
	return s
}
