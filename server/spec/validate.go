package spec

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/flotillamesh/flotilla/deploy"
	"github.com/flotillamesh/flotilla/federation"
)

// Default fills every field the user may omit. It is the only place defaults
// live, so that plan, apply and the spec hash agree on what a spec means.
func (m *Mesh) Default() {
	s := &m.Spec
	if s.MeshID == "" {
		s.MeshID = m.Metadata.Name
	}
	if s.TrustDomain == "" {
		s.TrustDomain = DefaultTrustDomain
	}
	if s.ControlPlaneNamespace == "" {
		s.ControlPlaneNamespace = DefaultControlPlaneNamespace
	}
	if s.DataplaneMode == "" {
		s.DataplaneMode = deploy.DataplaneSidecar
	}
	if s.PKI.Mode == "" {
		s.PKI.Mode = PKIBuiltin
	}
	if s.PKI.KeyAlgorithm == "" {
		s.PKI.KeyAlgorithm = DefaultKeyAlgorithm
	}
	if s.PKI.RootTTL.Duration == 0 {
		s.PKI.RootTTL.Duration = DefaultRootTTL
	}
	if s.PKI.IntermediateTTL.Duration == 0 {
		s.PKI.IntermediateTTL.Duration = DefaultIntermediateTTL
	}
	if ref := s.PKI.CertManager; ref != nil && ref.IssuerRef != nil {
		if ref.IssuerRef.Kind == "" {
			ref.IssuerRef.Kind = DefaultIssuerKind
		}
		if ref.IssuerRef.Group == "" {
			ref.IssuerRef.Group = DefaultIssuerGroup
		}
	}
	if s.Federation.TokenTTL.Duration == 0 {
		s.Federation.TokenTTL.Duration = DefaultTokenTTL
	}
	for i := range s.Clusters {
		c := &s.Clusters[i]
		if c.Role == "" {
			c.Role = federation.RolePrimary
		}
		if c.Gateway.ServiceType == "" {
			c.Gateway.ServiceType = LoadBalancer
		}
		if c.DataplaneMode == "" {
			c.DataplaneMode = s.DataplaneMode
		}
	}
}

// Validate checks the whole (defaulted) spec without any I/O and returns every
// problem at once as an *Error, or nil.
func (m *Mesh) Validate() error {
	if ps := m.validate(); len(ps) > 0 {
		sortProblems(ps)
		return &Error{Problems: ps}
	}
	m.validHash = m.Hash()
	return nil
}

// ValidatedAs reports whether Parse or Validate found m valid with the
// content whose Hash is hash, so that it need not be validated again.
func (m *Mesh) ValidatedAs(hash string) bool { return m.validHash != "" && m.validHash == hash }

type checker struct {
	m        *Mesh
	problems []Problem
}

func (c *checker) add(field, format string, args ...any) {
	c.problems = append(c.problems, Problem{Line: c.m.lines[field], Field: field, Message: fmt.Sprintf(format, args...)})
}

const dns1123Hint = "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"

func (c *checker) label(field, value string) {
	switch {
	case value == "":
		c.add(field, "required")
	case len(validation.IsDNS1123Label(value)) > 0:
		c.add(field, "%q is not a DNS-1123 label (%s)", value, dns1123Hint)
	}
}

func (m *Mesh) validate() []Problem {
	c := &checker{m: m}
	s := &m.Spec
	if m.APIVersion != APIVersion {
		c.add("apiVersion", "%q is not supported (want %s)", m.APIVersion, APIVersion)
	}
	if m.Kind != Kind {
		c.add("kind", "%q is not supported (want %s)", m.Kind, Kind)
	}
	c.label("metadata.name", m.Metadata.Name)
	c.label("spec.meshID", s.MeshID)
	if errs := validation.IsDNS1123Subdomain(s.TrustDomain); s.TrustDomain != "" && len(errs) > 0 {
		c.add("spec.trustDomain", "%q is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')", s.TrustDomain)
	}
	c.label("spec.controlPlaneNamespace", s.ControlPlaneNamespace)
	if v := s.Istio.Version; v != "" && !istioVersion.MatchString(v) {
		c.add("spec.istio.version", "%q is not an Istio version such as 1.27.1", v)
	}
	switch {
	case s.Topology == "":
		c.add("spec.topology", "required (one of %s)", list(deploy.Topologies()))
	case !s.Topology.Valid():
		c.add("spec.topology", "%q is not a topology (one of %s)", s.Topology, list(deploy.Topologies()))
	}
	c.pki()
	tokenTTL := s.Federation.TokenTTL.Duration
	switch {
	case tokenTTL < 0:
		c.add("spec.federation.tokenTTL", "%s: must be positive", tokenTTL)
	case tokenTTL < MinTokenTTL:
		c.add("spec.federation.tokenTTL", "%s is shorter than the %s Kubernetes issues a token for", tokenTTL, MinTokenTTL)
	}
	c.clusters()
	c.dataplane()
	return c.problems
}

// dataplane checks the dataplane modes: known values, and only what the
// pinned Istio supports in ambient mode (deploy.AmbientProblems), each
// problem on the field at fault.
func (c *checker) dataplane() {
	s := &c.m.Spec
	if !slices.Contains(deploy.DataplaneModes(), s.DataplaneMode) {
		c.add("spec.dataplaneMode", "%q is not a dataplane mode (one of %s)", s.DataplaneMode, list(deploy.DataplaneModes()))
	}
	index := map[string]int{}
	ambient := false
	for i, cl := range s.Clusters {
		index[cl.Name] = i
		if !slices.Contains(deploy.DataplaneModes(), cl.DataplaneMode) {
			c.add(fmt.Sprintf("spec.clusters[%d].dataplaneMode", i), "%q is not a dataplane mode (one of %s)", cl.DataplaneMode, list(deploy.DataplaneModes()))
		}
		ambient = ambient || cl.DataplaneMode == deploy.DataplaneAmbient
	}
	if !ambient {
		return
	}
	if v := s.Istio.Version; v != "" && istioVersion.MatchString(v) && olderThan(v, deploy.AmbientMinIstio) {
		c.add("spec.istio.version", "%s: ambient multicluster needs Istio %s or later (multi-network ambient is beta since %s; Sail's ZTunnel accepts no older version)", v, deploy.AmbientMinIstio, deploy.AmbientMinIstio)
	}
	if cm := s.PKI.CertManager; s.PKI.Mode == PKICertManager && cm != nil && cm.CSRAgent != nil {
		// ztunnel asks for its workloads' certificates on their behalf
		// (impersonation), which only istiod's CA grants.
		c.add("spec.pki.certManager.csrAgent", "not supported with dataplaneMode ambient: ztunnel requests its workloads' certificates on their behalf, which the csr-agent does not grant; leave csrAgent out (istiod signs with the cacerts cert-manager issues)")
	}
	for i, cl := range s.Clusters {
		if cl.DataplaneMode == deploy.DataplaneAmbient && cl.Gateway.NodePort != 0 {
			c.add(fmt.Sprintf("spec.clusters[%d].gateway.nodePort", i), "not used in ambient mode: istiod makes the east-west gateway's Service from its Gateway and allocates the node port")
		}
	}
	if !s.Topology.Valid() {
		return
	}
	for _, p := range deploy.AmbientProblems(s.Topology, c.m.Members()) {
		field := "spec." + p.Field
		if i, ok := index[p.Cluster]; ok && p.Cluster != "" {
			field = fmt.Sprintf("spec.clusters[%d].%s", i, p.Field)
			// A cluster that inherits the mesh's mode is pointed at the
			// mesh's field.
			if _, given := c.m.lines[field]; !given && p.Field == "dataplaneMode" {
				field = "spec.dataplaneMode"
			}
		}
		c.add(field, "%s", p.Message)
	}
}

// olderThan reports whether Istio version v ("1.28.2", "v1.29") is of a
// release line before minor ("1.29").
func olderThan(v, minor string) bool {
	var a, b, x, y int
	if _, err := fmt.Sscanf(strings.TrimPrefix(v, "v"), "%d.%d", &a, &b); err != nil {
		return false
	}
	if _, err := fmt.Sscanf(minor, "%d.%d", &x, &y); err != nil {
		return false
	}
	return a < x || (a == x && b < y)
}

var istioVersion = regexp.MustCompile(`^v?[0-9]+\.[0-9]+(\.[0-9]+)?(-[0-9A-Za-z.-]+)?$`)

func (c *checker) pki() {
	p := &c.m.Spec.PKI
	if !slices.Contains(PKIModes(), p.Mode) {
		c.add("spec.pki.mode", "%q is not a PKI mode (one of %s)", p.Mode, list(PKIModes()))
	}
	if !slices.Contains(KeyAlgorithms(), p.KeyAlgorithm) {
		c.add("spec.pki.keyAlgorithm", "%q is not a key algorithm (one of %s)", p.KeyAlgorithm, list(KeyAlgorithms()))
	}
	root, inter := p.RootTTL.Duration, p.IntermediateTTL.Duration
	if root < 0 {
		c.add("spec.pki.rootTTL", "%s: must be positive", root)
	}
	if inter < 0 {
		c.add("spec.pki.intermediateTTL", "%s: must be positive", inter)
	}
	if root > 0 && inter > root {
		c.add("spec.pki.intermediateTTL", "%s outlives the root (rootTTL %s); a certificate cannot be valid past its issuer", inter, root)
	}
	if r := p.Root; r != nil {
		if r.CertFile == "" {
			c.add("spec.pki.root.certFile", "required when a root is given")
		}
		if p.Offline && r.KeyFile != "" {
			c.add("spec.pki.root.keyFile", "an offline root's key never reaches flotilla; remove keyFile or offline")
		}
		issuerSigns := p.Mode == PKICertManager && p.CertManager != nil && p.CertManager.IssuerRef != nil
		if !p.Offline && r.KeyFile == "" && !issuerSigns {
			c.add("spec.pki.root.keyFile", "required to sign intermediates with an imported root (or set pki.offline for the CSR flow)")
		}
	}
	switch p.Mode {
	case PKIBuiltin:
		if p.CertManager != nil {
			c.add("spec.pki.certManager", "only used with mode cert-manager")
		}
	case PKICertManager:
		if p.CertManager != nil && p.CertManager.CSRAgent != nil && p.CertManager.CSRAgent.Image == "" {
			c.add("spec.pki.certManager.csrAgent.image", "required: the image that runs flotilla csr-agent")
		}
		if p.CertManager != nil && p.CertManager.CSRAgent != nil && c.m.Spec.Topology == federation.ExternalControlPlane {
			// The data planes' proxies would have to reach the control-plane
			// cluster's agent; flotilla installs one agent per cluster.
			c.add("spec.pki.certManager.csrAgent", "not supported with topology external-control-plane: the data-plane clusters' proxies would need the control-plane cluster's csr-agent; leave csrAgent out (istiod signs with the cacerts cert-manager issues)")
		}
		if p.CertManager == nil || p.CertManager.IssuerRef == nil {
			// Without an issuer, cert-manager signs with the hub's root,
			// which therefore has to be a root the hub holds the key of.
			if p.Offline {
				c.add("spec.pki.offline", "cert-manager mode without certManager.issuerRef signs with the hub's root, which an offline root cannot do; name an issuer")
			}
			return
		}
		ref := p.CertManager.IssuerRef
		// The issuer signs; flotilla needs only the root it chains to, as the trust bundle.
		if p.Root != nil && p.Root.KeyFile != "" {
			c.add("spec.pki.root.keyFile", "not used when certManager.issuerRef names the signer: give only the root certificate it chains to (certFile)")
		}
		if p.Offline {
			c.add("spec.pki.offline", "not used when certManager.issuerRef names the signer")
		}
		switch {
		case ref.Name == "":
			c.add("spec.pki.certManager.issuerRef.name", "required")
		case len(validation.IsDNS1123Subdomain(ref.Name)) > 0:
			c.add("spec.pki.certManager.issuerRef.name", "%q is not a valid issuer name (a DNS-1123 subdomain)", ref.Name)
		}
		if ref.Kind != "Issuer" && ref.Kind != "ClusterIssuer" {
			c.add("spec.pki.certManager.issuerRef.kind", "%q is not an issuer kind (Issuer or ClusterIssuer)", ref.Kind)
		}
		if len(validation.IsDNS1123Subdomain(ref.Group)) > 0 {
			c.add("spec.pki.certManager.issuerRef.group", "%q is not an API group", ref.Group)
		}
	}
}

func (c *checker) clusters() {
	s := &c.m.Spec
	if len(s.Clusters) == 0 {
		c.add("spec.clusters", "at least one cluster is required")
		return
	}
	names := map[string]int{}
	contexts := map[[2]string]int{}
	for i, cl := range s.Clusters {
		f := fmt.Sprintf("spec.clusters[%d]", i)
		c.label(f+".name", cl.Name)
		if j, dup := names[cl.Name]; dup && cl.Name != "" {
			c.add(f+".name", "%q is already the name of spec.clusters[%d]", cl.Name, j)
		} else {
			names[cl.Name] = i
		}
		key := [2]string{cl.Kubeconfig, cl.Context}
		switch j, dup := contexts[key]; {
		case cl.Context == "":
			c.add(f+".context", "required (the kubeconfig context that reaches %s)", orName(cl.Name, "this cluster"))
		case dup:
			c.add(f+".context", "context %q is already used by spec.clusters[%d] (%s); each cluster needs its own", cl.Context, j, s.Clusters[j].Name)
		default:
			contexts[key] = i
		}
		switch {
		case cl.Network == "":
			c.add(f+".network", "required (the Istio network this cluster's pods are on)")
		case len(validation.IsDNS1123Label(cl.Network)) > 0:
			c.add(f+".network", "%q is not a DNS-1123 label (%s)", cl.Network, dns1123Hint)
		}
		if s.Topology.Valid() && !slices.Contains(s.Topology.Roles(), cl.Role) {
			if slices.Contains([]federation.Role{federation.RolePrimary, federation.RoleRemote, federation.RoleControlPlane, federation.RoleDataPlane}, cl.Role) {
				c.add(f+".role", "role %s is not part of topology %s (allowed: %s)", cl.Role, s.Topology, list(s.Topology.Roles()))
			} else {
				c.add(f+".role", "%q is not a role (topology %s allows %s)", cl.Role, s.Topology, list(s.Topology.Roles()))
			}
		}
		if cl.ControlPlane != "" && (cl.Role == federation.RolePrimary || cl.Role == federation.RoleControlPlane) {
			c.add(f+".controlPlane", "a %s cluster runs its own istiod; only remote and data-plane clusters name a controlPlane", cl.Role)
		}
		if cl.Kubeconfig != "" && strings.TrimSpace(cl.Kubeconfig) != cl.Kubeconfig {
			c.add(f+".kubeconfig", "%q has leading or trailing spaces", cl.Kubeconfig)
		}
		if cl.APIServer != "" {
			c.apiServer(f+".apiServer", cl.APIServer)
		}
		switch cl.APIServerAccess {
		case "", deploy.APIServerDirect:
		case deploy.APIServerViaGateway:
			if cl.APIServer != "" {
				c.add(f+".apiServerAccess", "gateway: the readers reach the API server through the east-west gateway's address, so apiServer is not used; remove one of them")
			}
		default:
			c.add(f+".apiServerAccess", "%q is not one of %s", cl.APIServerAccess, list(deploy.APIServerAccesses()))
		}
		c.gateway(f+".gateway", cl.Gateway)
	}
	c.roles()
}

// roles checks that the topology has its control planes and that every
// cluster without its own istiod resolves to exactly one.
func (c *checker) roles() {
	s := &c.m.Spec
	if !s.Topology.Valid() {
		return
	}
	want := federation.RolePrimary
	if s.Topology == federation.ExternalControlPlane {
		want = federation.RoleControlPlane
	}
	members := c.m.Members()
	has := false
	for _, mem := range members {
		has = has || mem.Role == want
	}
	if !has {
		c.add("spec.clusters", "topology %s needs at least one %s cluster", s.Topology, want)
		return
	}
	for i, mem := range members {
		if mem.Role != federation.RoleRemote && mem.Role != federation.RoleDataPlane {
			continue
		}
		if !slices.Contains(s.Topology.Roles(), mem.Role) {
			continue // already reported
		}
		if _, err := deploy.ServedBy(s.Topology, mem, members); err != nil {
			c.add(fmt.Sprintf("spec.clusters[%d].controlPlane", i), "%v", err)
		}
	}
}

func (c *checker) apiServer(field, raw string) {
	u, err := url.Parse(raw)
	if err != nil {
		c.add(field, "%q is not a URL: %v", raw, unwrapURLError(err))
		return
	}
	switch {
	case u.Scheme != "https":
		c.add(field, "%q: must be an https:// URL", raw)
	case u.Host == "" || u.Hostname() == "":
		c.add(field, "%q has no host", raw)
	case u.User != nil:
		c.add(field, "%q: credentials do not belong in the URL", raw)
	case u.RawQuery != "" || u.Fragment != "":
		c.add(field, "%q: a query or fragment is not allowed", raw)
	case u.Port() != "" && !validPort(u.Port()):
		c.add(field, "%q: port %s is not a port number", raw, u.Port())
	case IsLoopbackHost(u.Hostname()) && !c.m.Spec.AllowLoopbackAPIServers:
		c.add(field, "%q is a loopback address that other clusters cannot reach (set spec.allowLoopbackAPIServers only when every cluster runs on this host)", raw)
	}
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func validPort(p string) bool {
	var n int
	_, err := fmt.Sscanf(p, "%d", &n)
	return err == nil && fmt.Sprint(n) == p && n > 0 && n < 65536
}

// IsLoopbackHost reports whether host (a name or IP, no port) is loopback or
// unspecified, judged from the text alone: no DNS lookup.
func IsLoopbackHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

func (c *checker) gateway(field string, g Gateway) {
	if !slices.Contains(ServiceTypes(), g.ServiceType) {
		c.add(field+".serviceType", "%q is not a Service type (one of %s)", g.ServiceType, list(ServiceTypes()))
	}
	if g.NodePort != 0 {
		switch {
		case g.ServiceType != NodePort:
			c.add(field+".nodePort", "only used with serviceType NodePort")
		case g.NodePort < 1 || g.NodePort > 65535:
			c.add(field+".nodePort", "%d is not a port number", g.NodePort)
		}
	}
	if g.Address != "" {
		if net.ParseIP(g.Address) == nil && len(validation.IsDNS1123Subdomain(g.Address)) > 0 {
			c.add(field+".address", "%q is neither an IP address nor a DNS name", g.Address)
		}
	}
	if g.ServiceType == ClusterIP && g.Address == "" {
		c.add(field+".address", "required with serviceType ClusterIP: other clusters cannot reach a cluster IP")
	}
}

func orName(name, fallback string) string {
	if name == "" {
		return fallback
	}
	return name
}

func list[T ~string](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

// sortProblems orders problems as they appear in the document; problems
// without a line (whole-spec ones) keep their order after them.
func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		li, lj := ps[i].Line, ps[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
}
