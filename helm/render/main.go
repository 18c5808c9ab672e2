// render: the manifests of a Helm chart, rendered the way Helm renders them, for CI machines
// that cannot install the helm binary. It uses what Helm itself uses: Go's text/template, the
// sprig function library, values merged chart-then-files, YAML numbers read as JSON numbers
// (float64), and Helm's own additions (include, tpl, required, toYaml, fromYaml, toJson,
// fromJson), with Helm's "missingkey=zero". It does not talk to a cluster (lookup finds nothing, no
// Capabilities beyond a fixed Kubernetes version) and knows no chart dependencies.
//
// usage: render CHART_DIR OUT_DIR [-f VALUES.yaml ...]
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	sprig "github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: "+format+"\n", args...)
	os.Exit(1)
}

// readYAML reads a YAML file the way Helm's values are read: through JSON, so numbers are float64.
func readYAML(path string) map[string]interface{} {
	raw, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	var tree interface{}
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		fail("%s: %v", path, err)
	}
	out := map[string]interface{}{}
	if tree == nil {
		return out
	}
	asJSON, err := json.Marshal(tree)
	if err != nil {
		fail("%s: %v", path, err)
	}
	if err := json.Unmarshal(asJSON, &out); err != nil {
		fail("%s: %v", path, err)
	}
	return out
}

// merge overlays src onto dst as Helm coalesces values: maps merge key by key, anything else
// replaces, and null deletes.
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for key, value := range src {
		if value == nil {
			delete(dst, key)
			continue
		}
		srcMap, srcIsMap := value.(map[string]interface{})
		dstMap, dstIsMap := dst[key].(map[string]interface{})
		if srcIsMap && dstIsMap {
			dst[key] = merge(dstMap, srcMap)
		} else {
			dst[key] = value
		}
	}
	return dst
}

func toYAML(v interface{}) string {
	var buffer bytes.Buffer
	encoder := yaml.NewEncoder(&buffer)
	encoder.SetIndent(2)
	if err := encoder.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buffer.String(), "\n")
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: render CHART_DIR OUT_DIR [-f VALUES.yaml ...]")
	}
	chartDir, outDir := os.Args[1], os.Args[2]
	values := readYAML(filepath.Join(chartDir, "values.yaml"))
	for i := 3; i < len(os.Args); i++ {
		if os.Args[i] == "-f" && i+1 < len(os.Args) {
			values = merge(values, readYAML(os.Args[i+1]))
			i++
		}
	}
	chart := readYAML(filepath.Join(chartDir, "Chart.yaml"))
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": "beamline", "Namespace": "beamflow", "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
		},
	}

	root := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &out)
		return out
	}
	funcs["toJson"] = func(v interface{}) string {
		out, _ := json.Marshal(v)
		return string(out)
	}
	funcs["fromJson"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		_ = json.Unmarshal([]byte(s), &out)
		return out
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	// Helm's lookup without a cluster (helm template): nothing found.
	funcs["lookup"] = func(apiVersion, kind, namespace, name string) map[string]interface{} {
		return map[string]interface{}{}
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buffer bytes.Buffer
		err := root.ExecuteTemplate(&buffer, name, data)
		return buffer.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buffer bytes.Buffer
		err = t.Execute(&buffer, data)
		return buffer.String(), err
	}
	root.Funcs(funcs)

	files, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	sort.Strings(files)
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			fail("%v", err)
		}
		name := filepath.Join(filepath.Base(chartDir), "templates", filepath.Base(file))
		if _, err := root.New(name).Parse(string(raw)); err != nil {
			fail("%v", err)
		}
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		fail("%v", err)
	}
	for _, file := range files {
		base := filepath.Base(file)
		if strings.HasPrefix(base, "_") || !(strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml")) {
			continue
		}
		name := filepath.Join(filepath.Base(chartDir), "templates", base)
		top["Template"] = map[string]interface{}{"Name": name, "BasePath": filepath.Join(filepath.Base(chartDir), "templates")}
		var buffer bytes.Buffer
		if err := root.ExecuteTemplate(&buffer, name, top); err != nil {
			fail("%v", err)
		}
		// One file per document, empty documents dropped, as helm template prints them.
		for index, document := range strings.Split(buffer.String(), "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(document), "---")) == "" {
				continue
			}
			out := filepath.Join(outDir, fmt.Sprintf("%s-%d.yaml", strings.TrimSuffix(base, ".yaml"), index))
			if err := os.WriteFile(out, []byte("# Source: "+name+"\n"+document+"\n"), 0o644); err != nil {
				fail("%v", err)
			}
		}
	}
}
