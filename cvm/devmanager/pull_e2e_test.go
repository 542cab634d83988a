package devmanager_test

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/pull/cipherfile"
	"github.com/cvmd/cvmd/pull/kbs/kbstest"
	"github.com/cvmd/cvmd/pull/pulltest"
)

// startCvmdProc starts `cvmd supervise --dev` with the environment file
// extra lines and returns a function that kills it at once (SIGKILL: the
// whole tree goes, as when the VM's supervisor dies) and waits.
func (g *guest) startCvmdProc(extra string) (kill func()) {
	t := g.t
	env := filepath.Join(g.work, "environment")
	os.WriteFile(env, []byte("AGENT_CVM_GRPC_URL="+g.mgrAddr+"\nAGENT_CVM_ID=e2e\n"+extra), 0o600)
	sup := exec.Command(filepath.Join(g.bin, "cvmd"), "supervise", "--dev", "--state", filepath.Join(g.work, "state"),
		"--listen", g.agentAddr, "--env", env, "--attestation", "simulated")
	logf, _ := os.OpenFile(filepath.Join(g.work, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { sup.Wait(); close(exited) }()
	stopped := false
	t.Cleanup(func() {
		defer logf.Close()
		if !stopped {
			sup.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				sup.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(g.work, "supervisor.log"))
			t.Logf("supervisor log:\n%s", tail(string(b), 8000))
		}
	})
	return func() {
		stopped = true
		sup.Process.Kill()
		<-exited
	}
}

func seal(t *testing.T, in, out string, key []byte) {
	src, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, _ := os.Create(out)
	defer dst.Close()
	nonce := make([]byte, 12)
	rand.Read(nonce)
	if _, err := cipherfile.SealStream(dst, src, key, nonce); err != nil {
		t.Fatal(err)
	}
}

// TestE2EPullMode is Cocos's pull mode end to end against a real `cvmd
// supervise --dev`: the manager sends a computation whose algorithm is
// encrypted on an HTTPS server (its key released by the test KBS after it
// verified the attestation child's simulated SNP+vTPM evidence) and whose
// dataset, declared without a filename, is in a SeaweedFS S3 bucket. The
// supervisor grants the agent exactly those hosts in the egress; nothing
// is uploaded; the result is downloaded; the manager sees what was fetched
// from where.
func TestE2EPullMode(t *testing.T) {
	g := newGuest(t)
	ca := pulltest.NewCA(t)
	caFile := filepath.Join(g.work, "pull-ca.pem")
	os.WriteFile(caFile, ca.PEM, 0o644)
	files := pulltest.NewFileServer(t, ca)
	store := pulltest.StartS3(t)
	kbs := kbstest.Start(t, ca.Server)
	kbs.Verify = verify.Options{AllowSimulated: true}
	key := make([]byte, 32)
	rand.Read(key)
	kbs.SetResource("default/key/iris-algo", key)
	sealed := filepath.Join(g.work, "algo.enc")
	seal(t, g.algo, sealed, key)
	files.Add("/algorithms/iris", sealed)

	c := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(store.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(store.AccessKey, store.SecretKey, "")})
	c.CreateBucket(g.ctx, &s3.CreateBucketInput{Bucket: aws.String(store.Bucket)})
	fh, _ := os.Open(g.data)
	if _, err := c.PutObject(g.ctx, &s3.PutObjectInput{Bucket: aws.String(store.Bucket), Key: aws.String("tables/iris.csv"), Body: fh}); err != nil {
		t.Fatal(err)
	}
	fh.Close()

	var err error
	g.req, err = devmanager.Spec{ID: "e2e-1", Name: "iris pulled", AlgoType: "bin", PublicKey: filepath.Join(g.work, "public.pem"),
		Algorithm: g.algo, AlgoSource: &cvms.Source{Type: "https", Url: files.URL("/algorithms/iris"), Encrypted: true, KbsResourcePath: "default/key/iris-algo"},
		KBSURL:         kbs.URL,
		RemoteDatasets: []devmanager.RemoteDataset{{Source: &cvms.Source{Type: "s3", Url: "s3://" + store.Bucket + "/tables/iris.csv"}, File: g.data}},
	}.Build()
	if err != nil {
		t.Fatal(err)
	}
	srv := g.startManager(true)
	s3host := strings.TrimPrefix(store.Endpoint, "http://")
	g.startCvmdProc("COCOS_EGRESS_ALLOWLIST=" + files.Addr + " " + s3host + " " + kbs.HostPort() + "\n" +
		"CVMD_PULL_CA_CERTS=" + caFile + "\nAWS_ACCESS_KEY_ID=" + store.AccessKey + "\nAWS_SECRET_ACCESS_KEY=" + store.SecretKey +
		"\nAWS_ENDPOINT_URL_S3=" + store.Endpoint + "\n")
	g.waitRunRes(srv)
	g.waitEvent(srv, "agent/ConsumingResults/Ready")
	if r := g.result(); !strings.HasPrefix(r, "accuracy 0.9") {
		t.Fatalf("result.txt = %q", r)
	}
	for _, w := range []string{"agent/ResourceFetched/Completed", "supervisor/computation.pull_granted/ok", "agent/ConsumingResults/Ready"} {
		if err := srv.Wait(g.ctx, func([]devmanager.Received) bool { seen, _ := g.events(); return seen[w] }); err != nil {
			seen, _ := g.events()
			t.Fatalf("event %s never reached the manager (seen %v)", w, seen)
		}
	}
	var sources []string
	for _, m := range srv.Messages() {
		if e := m.Msg.GetAgentEvent(); e != nil && e.GetEventType() == "ResourceFetched" {
			sources = append(sources, string(e.GetDetails()))
		}
	}
	if len(sources) != 2 || !strings.Contains(sources[0], "/algorithms/iris") || !strings.Contains(sources[0], `"encrypted":"true"`) ||
		!strings.Contains(sources[1], "s3://"+store.Bucket+"/tables/iris.csv") || !strings.Contains(sources[1], `"filename":"iris.csv"`) {
		t.Fatalf("fetch events: %v", sources)
	}
	if kbs.Releases.Load() != 1 {
		t.Fatalf("the KBS released %d keys", kbs.Releases.Load())
	}
	// The results are consumed: the computation is over, and so is its grant.
	g.waitEvent(srv, "supervisor/computation.pull_revoked/ok")
	if _, err := os.Stat(g.grantFile()); !os.IsNotExist(err) {
		t.Fatalf("the pull grant outlived its computation: %v", err)
	}
}

func (g *guest) grantFile() string { return filepath.Join(g.work, "state", "run", "pull-grant.json") }

// TestE2EPullGrantNotRenewedForEndedComputation: a supervisor starting on a
// state whose saved pull grant names a computation the agent does not
// resume (it ended, or never reached the agent) renews nothing: the file
// is removed and the manager hears why.
func TestE2EPullGrantNotRenewedForEndedComputation(t *testing.T) {
	g := newGuest(t)
	os.MkdirAll(filepath.Dir(g.grantFile()), 0o700)
	os.WriteFile(g.grantFile(), []byte(`{"computation_id":"e2e-0","client":"agent","entries":["127.0.0.1:9"]}`), 0o600)
	srv := g.startManager(false)
	g.startCvmdProc("")
	g.waitEvent(srv, "supervisor/computation.pull_revoked/ok")
	var why string
	for _, m := range srv.Messages() {
		if e := m.Msg.GetAgentEvent(); e != nil && e.GetEventType() == "computation.pull_revoked" {
			why = string(e.GetDetails())
		}
	}
	if !strings.Contains(why, "e2e-0") || !strings.Contains(why, "not renewed") {
		t.Fatalf("revocation event %s", why)
	}
	if _, err := os.Stat(g.grantFile()); !os.IsNotExist(err) {
		t.Fatalf("the grant of an ended computation was kept: %v", err)
	}
}

// TestE2EPullSupervisorKilledMidFetch: the source dies in the middle of the
// dataset, the whole cvmd is killed while it retries, a new cvmd starts on
// the same state: the agent resumes the computation, the egress still
// grants its source, the download resumes with a range request, and the
// computation completes.
func TestE2EPullSupervisorKilledMidFetch(t *testing.T) {
	g := newGuest(t)
	ca := pulltest.NewCA(t)
	caFile := filepath.Join(g.work, "pull-ca.pem")
	os.WriteFile(caFile, ca.PEM, 0o644)
	files := pulltest.NewFileServer(t, ca)
	files.Add("/iris.csv", g.data)
	var err error
	g.req, err = devmanager.Spec{ID: "e2e-1", Name: "iris", Algorithm: g.algo, AlgoType: "bin", PublicKey: filepath.Join(g.work, "public.pem"),
		RemoteDatasets: []devmanager.RemoteDataset{{Source: &cvms.Source{Url: files.URL("/iris.csv")}, File: g.data, Filename: "iris.csv"}},
	}.Build()
	if err != nil {
		t.Fatal(err)
	}
	env := "COCOS_EGRESS_ALLOWLIST=" + files.Addr + "\nCVMD_PULL_CA_CERTS=" + caFile + "\n"
	srv := g.startManager(true)
	died := files.DieAfter(1500)
	kill := g.startCvmdProc(env)
	g.waitRunRes(srv)
	g.retry("algo", g.algo, g.priv, "-a", "bin")
	select {
	case <-died:
	case <-g.ctx.Done():
		t.Fatal("the dataset was never fetched")
	}
	part := ""
	deadline := time.Now().Add(30 * time.Second)
	for part == "" && time.Now().Before(deadline) {
		m, _ := filepath.Glob(filepath.Join(g.work, "state", "computation", ".pull", "*.part"))
		if len(m) == 1 {
			if st, err := os.Stat(m[0]); err == nil && st.Size() > 0 {
				part = m[0]
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if part == "" {
		t.Fatal("no partial download on disk")
	}
	kill()
	files.Start()
	g.startCvmdProc(env)
	g.waitEvent(srv, "agent/ConsumingResults/Ready")
	if r := g.result(); !strings.HasPrefix(r, "accuracy 0.9") {
		t.Fatalf("result.txt = %q", r)
	}
	if files.Ranges.Load() == 0 || !strings.HasPrefix(files.LastRange(), "bytes=") || files.LastRange() == "bytes=0-" {
		t.Fatalf("the new cvmd did not resume: %d range requests, last %q", files.Ranges.Load(), files.LastRange())
	}
}

func (g *guest) waitEvent(srv *devmanager.Server, w string) {
	g.t.Helper()
	if err := srv.Wait(g.ctx, func([]devmanager.Received) bool { seen, _ := g.events(); return seen[w] || seen["agent/Failed/Failed"] }); err != nil {
		seen, _ := g.events()
		for _, m := range srv.Messages() {
			if l := m.Msg.GetAgentLog(); l != nil && strings.Contains(l.GetMessage(), "child=agent") {
				g.t.Logf("agent log: %s %s", l.GetLevel(), l.GetMessage())
			}
		}
		g.t.Fatalf("event %s never reached the manager (seen %v)", w, seen)
	}
	if seen, _ := g.events(); seen["agent/Failed/Failed"] {
		for _, m := range srv.Messages() {
			if e := m.Msg.GetAgentEvent(); e != nil && e.GetStatus() == "Failed" {
				g.t.Logf("failure event: %s %s", e.GetEventType(), e.GetDetails())
			}
		}
		g.t.Fatal("the computation failed")
	}
}
