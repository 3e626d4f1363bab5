// MathJax configuration for pymdownx.arithmatex (generic mode): formulas arrive as
// \( \) and \[ \] inside elements of class "arithmatex", and only those are processed.
//
// Each formula is typeset exactly once per page. MathJax's own start-up pass is off
// (startup.typeset: false); the page is typeset either by pageReady, when MathJax has
// loaded after the page, or by mkdocs-material's document$ signal, whichever comes second
// (both must have happened). window.gossipMath.typesets counts the passes, for the browser
// check.
window.gossipMath = { typesets: 0, loaded: false, pending: true };

function gossipTypeset() {
  const state = window.gossipMath;
  if (!state.loaded || !state.pending) {
    return Promise.resolve();
  }
  state.pending = false;
  state.typesets += 1;
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  return MathJax.typesetPromise();
}

window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  },
  startup: {
    typeset: false,
    pageReady: () => {
      window.gossipMath.loaded = true;
      return gossipTypeset();
    }
  }
};

// document$ emits once per page load, and again after each instant navigation.
let gossipFirstPage = true;
document$.subscribe(() => {
  if (!gossipFirstPage) {
    window.gossipMath.pending = true;
  }
  gossipFirstPage = false;
  gossipTypeset();
});
