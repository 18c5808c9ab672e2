//! beamflow's live dashboard page, embedded: our HTML, JS and CSS (`page/`) and uPlot, the one
//! library the page uses, installed from npm at build time (build.rs) and pinned by
//! package-lock.json. Serving them (routes, headers) is the reducer's job.

/// One file of the page, served at `/assets/{path}` (index.html also at `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The file name under `/assets/`.
    pub path: &'static str,
    /// The `Content-Type` to serve it with.
    pub content_type: &'static str,
    /// The file's bytes.
    pub bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

static ASSETS: [Asset; 6] = [
    Asset {
        path: "index.html",
        content_type: HTML,
        bytes: include_bytes!("../page/index.html"),
    },
    Asset {
        path: "dashboard.js",
        content_type: JS,
        bytes: include_bytes!("../page/dashboard.js"),
    },
    Asset {
        path: "dashboard.css",
        content_type: CSS,
        bytes: include_bytes!("../page/dashboard.css"),
    },
    Asset {
        path: "uPlot.iife.min.js",
        content_type: JS,
        bytes: include_bytes!(concat!(env!("BEAMFLOW_UPLOT"), "/dist/uPlot.iife.min.js")),
    },
    Asset {
        path: "uPlot.min.css",
        content_type: CSS,
        bytes: include_bytes!(concat!(env!("BEAMFLOW_UPLOT"), "/dist/uPlot.min.css")),
    },
    // uPlot is MIT: its notice ships with it.
    Asset {
        path: "uPlot.LICENSE",
        content_type: TEXT,
        bytes: include_bytes!(concat!(env!("BEAMFLOW_UPLOT"), "/LICENSE")),
    },
];

/// Every file of the page: "index.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js",
/// "uPlot.min.css" and "uPlot.LICENSE".
pub fn assets() -> &'static [Asset] {
    &ASSETS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(path: &str) -> &'static Asset {
        match assets().iter().find(|a| a.path == path) {
            Some(a) => a,
            None => panic!("no asset {path}"),
        }
    }

    fn text(path: &str) -> &'static str {
        match std::str::from_utf8(asset(path).bytes) {
            Ok(s) => s,
            Err(e) => panic!("{path} is not UTF-8: {e}"),
        }
    }

    #[test]
    fn every_asset_is_there_with_its_content_type() {
        let expected = [
            ("index.html", "text/html"),
            ("dashboard.js", "text/javascript"),
            ("dashboard.css", "text/css"),
            ("uPlot.iife.min.js", "text/javascript"),
            ("uPlot.min.css", "text/css"),
            ("uPlot.LICENSE", "text/plain"),
        ];
        assert_eq!(assets().len(), expected.len());
        for (path, kind) in expected {
            let a = asset(path);
            assert!(
                a.content_type.starts_with(kind),
                "{path}: {}",
                a.content_type
            );
            assert!(!a.bytes.is_empty(), "{path} is empty");
        }
    }

    #[test]
    fn uplot_is_the_library_and_its_notice() {
        assert!(text("uPlot.iife.min.js").contains("uPlot"));
        assert!(text("uPlot.min.css").contains(".uplot"));
        assert!(text("uPlot.LICENSE").contains("MIT"));
    }

    #[test]
    fn our_files_name_no_other_host() {
        for path in ["index.html", "dashboard.js", "dashboard.css"] {
            let t = text(path);
            assert!(
                !t.contains("http://") && !t.contains("https://"),
                "{path} names a URL"
            );
            assert!(
                !t.contains("//cdn") && !t.contains("@import"),
                "{path} loads from elsewhere"
            );
        }
    }

    #[test]
    fn the_html_has_no_inline_script_or_style() {
        let html = text("index.html");
        assert!(!html.contains("style="), "a style attribute");
        assert!(!html.contains("<style"), "a style element");
        // Every script tag has a src and nothing between its tags.
        let mut rest = html;
        while let Some(at) = rest.find("<script") {
            let tag_end = rest[at..]
                .find('>')
                .map(|e| at + e + 1)
                .unwrap_or(rest.len());
            assert!(
                rest[at..tag_end].contains("src="),
                "a script without src: {}",
                &rest[at..tag_end]
            );
            let body_end = rest[tag_end..]
                .find("</script>")
                .map(|e| tag_end + e)
                .unwrap_or(rest.len());
            assert!(
                rest[tag_end..body_end].trim().is_empty(),
                "an inline script body"
            );
            rest = &rest[body_end..];
        }
        // Handlers in attributes are inline script too.
        for handler in [
            "onclick=",
            "onload=",
            "onerror=",
            "onchange=",
            "javascript:",
        ] {
            assert!(!html.contains(handler), "{handler} in index.html");
        }
    }

    #[test]
    fn the_html_loads_every_script_and_style_from_assets() {
        let html = text("index.html");
        for path in [
            "uPlot.iife.min.js",
            "uPlot.min.css",
            "dashboard.js",
            "dashboard.css",
        ] {
            assert!(
                html.contains(&format!("/assets/{path}")),
                "index.html does not load {path}"
            );
        }
    }
}
