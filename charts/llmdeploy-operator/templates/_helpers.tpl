{{/*
Names, labels and the RBAC rule sets of the llmdeploy-operator chart. Every define is prefixed
"llmdeploy-operator." so that it cannot clash with a parent chart's defines.
*/}}

{{/*
The chart name, or nameOverride. Truncated to 63 characters (a DNS-1123 label, the limit of
label values and of Service names) and stripped of a trailing "-" the cut may leave.
*/}}
{{- define "llmdeploy-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<name>".

Truncation math: Helm limits release names to 53 characters and the chart name is 18
("llmdeploy-operator"), so "<release>-<name>" can reach 53 + 1 + 18 = 72 characters; it is cut
to 63, the DNS-1123 label limit that the Deployment's pods and the Service names inherit, and a
trailing "-" left by the cut is removed. Names this chart derives with a suffix cut the prefix
further (see llmdeploy-operator.metricsServiceName).
*/}}
{{- define "llmdeploy-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The metrics Service: "<fullname>-metrics". A Service name is a DNS-1035 label (63 characters),
so the prefix is cut to 63 - len("-metrics") = 55 characters first.
*/}}
{{- define "llmdeploy-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "llmdeploy-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Cluster-scoped objects (ClusterRole, ClusterRoleBinding) are shared by every release in the
cluster: "<release namespace>-<fullname>" keeps two releases with the same name in different
namespaces (e.g. one per team with watchNamespaces) apart. RBAC names may be 253 characters.
*/}}
{{- define "llmdeploy-operator.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "llmdeploy-operator.fullname" .) }}
{{- end }}

{{/*
"<chart>-<version>" for the helm.sh/chart label ("+" is not allowed in label values).
*/}}
{{- define "llmdeploy-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object: the app.kubernetes.io recommended labels plus helm.sh/chart.
*/}}
{{- define "llmdeploy-operator.labels" -}}
helm.sh/chart: {{ include "llmdeploy-operator.chart" . }}
{{ include "llmdeploy-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: llmdeploy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: only name and instance, which never change over the release's life (a
Deployment's selector is immutable).
*/}}
{{- define "llmdeploy-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmdeploy-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount: serviceAccount.name, else the full name when the chart creates
it, else the namespace's "default".
*/}}
{{- define "llmdeploy-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmdeploy-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Template-time check: KubeRay's RayService API must exist, or every LLMDeployment would fail to
render its child. `helm template` without a cluster knows no such API: pass
`--api-versions ray.io/v1/RayService` or set kuberay.check=false.
*/}}
{{- define "llmdeploy-operator.requireKubeRay" -}}
{{- if and .Values.kuberay.check (not (.Capabilities.APIVersions.Has "ray.io/v1/RayService")) }}
{{- fail "KubeRay is not installed: this cluster has no RayService API (ray.io/v1/RayService), which the llmdeploy operator creates for every LLMDeployment. Install KubeRay 1.7.0 first (helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0), or set kuberay.check=false (for `helm template` without a cluster, pass --api-versions ray.io/v1/RayService instead)." }}
{{- end }}
{{- end }}

{{/*
RBAC rules on namespaced resources: exactly the calls the operator makes (checked against its
real traffic by tests/integration/test_rbac_covers_operator_calls.py). In a ClusterRole when all
namespaces are watched, else in a Role per watched namespace.
*/}}
{{- define "llmdeploy-operator.rules.namespaced" -}}
# kopf watches LLMDeployments and patches its bookkeeping annotations onto them.
- apiGroups: ["llmdeploy.io"]
  resources: ["llmdeployments"]
  verbs: ["list", "watch", "patch"]
# Conditions, phase, observedGeneration and replica counts go through the status subresource.
- apiGroups: ["llmdeploy.io"]
  resources: ["llmdeployments/status"]
  verbs: ["patch"]
# The RayService is created with an ownerReference that sets blockOwnerDeletion. Where the
# OwnerReferencesPermissionEnforcement admission plugin is enabled (e.g. OpenShift), that needs
# update on the owner's finalizers; the operator itself never writes them.
- apiGroups: ["llmdeploy.io"]
  resources: ["llmdeployments/finalizers"]
  verbs: ["update"]
# The child: read before writing, created, replaced with a resourceVersion precondition when it
# drifts; list and watch feed kopf's index of owned RayServices (the status source).
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "update"]
# Events on LLMDeployments (kopf posts core/v1 Events; it never patches or aggregates them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
RBAC rules for `--leader-elect`: the Lease in the release namespace.
*/}}
{{- define "llmdeploy-operator.rules.leaderElection" -}}
# Read the Lease, create it once, renew or take it over (replace with a resourceVersion).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/*
RBAC rules on cluster-scoped resources kopf observes. Without them kopf falls back to a
startup-only scan and logs a warning; with them a RayService CRD installed after the operator
(KubeRay installed later) is noticed without a restart.
*/}}
{{- define "llmdeploy-operator.rules.crds" -}}
# kopf lists and watches CRDs to notice resources (re)defined at runtime.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Only with watchNamespaces: kopf lists and watches namespaces to learn which of the named ones
exist (all-namespace mode skips this).
*/}}
{{- define "llmdeploy-operator.rules.namespaces" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
