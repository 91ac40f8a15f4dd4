//! How deep an HTML document nests, measured with html5ever's tokenizer in
//! linear time, before the tree builder (quadratic in the depth) sees it.
//!
//! The count follows the tree builder's rules where they can be abused: a
//! self-closing tag on a non-void element (`<div/>`) still opens it, and an
//! end tag only closes an element that is open and in scope (`</x>` closes
//! nothing). It errs towards counting too deep, never too shallow.

use std::cell::{Cell, RefCell};

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use html5ever::{LocalName, local_name};

/// How far below the top an end tag looks for its element. The tree
/// builder looks further; giving up early only over-counts, and it keeps a
/// flood of unmatched end tags linear.
const SEARCH_LIMIT: usize = 64;

/// The deepest nesting of elements in `html`. Void elements and elements
/// whose end tag may be left out (the parser closes them implicitly) do not
/// count, so sloppy but shallow HTML is not over-counted. Stops counting
/// past `limit`.
pub fn html_depth(html: &str, limit: usize) -> usize {
    let tokenizer = Tokenizer::new(
        Depth {
            open: RefCell::new(Vec::new()),
            foreign: Cell::new(0),
            max: Cell::new(0),
            limit,
        },
        TokenizerOpts::default(),
    );
    let input = BufferQueue::default();
    // In slices, so that a hopeless document stops early.
    let mut rest = html;
    while !rest.is_empty() && tokenizer.sink.max.get() <= limit {
        let mut cut = rest.len().min(64 * 1024);
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        input.push_back(StrTendril::from_slice(&rest[..cut]));
        let _ = tokenizer.feed(&input);
        rest = &rest[cut..];
    }
    tokenizer.end();
    tokenizer.sink.max.get()
}

struct Depth {
    /// Counted open elements, innermost last; at most `limit + 1`.
    open: RefCell<Vec<LocalName>>,
    /// How many `svg`/`math` are open: there, `<x/>` really is empty.
    foreign: Cell<usize>,
    max: Cell<usize>,
    limit: usize,
}

impl Depth {
    fn start(&self, name: &LocalName, self_closing: bool) -> TokenSinkResult<()> {
        let foreign = self.foreign.get() > 0;
        if uncounted(name) || (self_closing && foreign) {
            return TokenSinkResult::Continue;
        }
        let mut open = self.open.borrow_mut();
        if open.len() <= self.limit {
            open.push(name.clone());
            if is_foreign_root(name) {
                self.foreign.set(self.foreign.get() + 1);
            }
        }
        self.max.set(self.max.get().max(open.len()));
        if foreign {
            return TokenSinkResult::Continue;
        }
        // Their content is text, not markup.
        match *name {
            local_name!("script") => TokenSinkResult::RawData(RawKind::ScriptData),
            local_name!("style")
            | local_name!("xmp")
            | local_name!("iframe")
            | local_name!("noembed")
            | local_name!("noframes") => TokenSinkResult::RawData(RawKind::Rawtext),
            local_name!("title") | local_name!("textarea") => {
                TokenSinkResult::RawData(RawKind::Rcdata)
            }
            local_name!("plaintext") => TokenSinkResult::Plaintext,
            _ => TokenSinkResult::Continue,
        }
    }

    /// Closes `name` and what is open inside it, if it is open and in scope.
    fn end(&self, name: &LocalName) {
        if uncounted(name) {
            return;
        }
        let mut open = self.open.borrow_mut();
        let found = open
            .iter()
            .enumerate()
            .rev()
            .take(SEARCH_LIMIT)
            .take_while(|(_, e)| *e == name || !is_scope_boundary(e))
            .find(|(_, e)| *e == name)
            .map(|(i, _)| i);
        if let Some(i) = found {
            let closed = open[i..].iter().filter(|e| is_foreign_root(e)).count();
            self.foreign.set(self.foreign.get() - closed);
            open.truncate(i);
        }
    }
}

impl TokenSink for Depth {
    type Handle = ();
    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let Token::TagToken(tag) = token else {
            return TokenSinkResult::Continue;
        };
        match tag.kind {
            TagKind::StartTag => self.start(&tag.name, tag.self_closing),
            TagKind::EndTag => {
                self.end(&tag.name);
                TokenSinkResult::Continue
            }
        }
    }
}

fn is_foreign_root(name: &LocalName) -> bool {
    matches!(*name, local_name!("svg") | local_name!("math"))
}

/// Elements past which an end tag does not look ("has an element in scope").
fn is_scope_boundary(name: &LocalName) -> bool {
    matches!(
        *name,
        local_name!("applet")
            | local_name!("marquee")
            | local_name!("object")
            | local_name!("table")
            | local_name!("template")
            | local_name!("foreignObject")
            | local_name!("desc")
            | local_name!("annotation-xml")
    )
}

/// Elements that never have content, or whose end tag may be left out.
fn uncounted(name: &LocalName) -> bool {
    matches!(
        *name,
        local_name!("area")
            | local_name!("base")
            | local_name!("br")
            | local_name!("col")
            | local_name!("embed")
            | local_name!("hr")
            | local_name!("img")
            | local_name!("input")
            | local_name!("link")
            | local_name!("meta")
            | local_name!("source")
            | local_name!("track")
            | local_name!("wbr")
            | local_name!("param")
            | local_name!("keygen")
            | local_name!("p")
            | local_name!("li")
            | local_name!("dt")
            | local_name!("dd")
            | local_name!("option")
            | local_name!("optgroup")
            | local_name!("tr")
            | local_name!("td")
            | local_name!("th")
            | local_name!("thead")
            | local_name!("tbody")
            | local_name!("tfoot")
            | local_name!("rb")
            | local_name!("rt")
            | local_name!("rtc")
            | local_name!("rp")
            | local_name!("colgroup")
            | local_name!("caption")
            | local_name!("html")
            | local_name!("head")
            | local_name!("body")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    #[test]
    fn self_closing_syntax_still_opens_a_non_void_element() {
        assert_eq!(html_depth(&"<div/>".repeat(2000), LIMIT), LIMIT + 1);
        // Void elements stay empty either way.
        assert_eq!(html_depth(&"<br/><img/>".repeat(2000), LIMIT), 0);
        // Inside SVG the syntax is honoured.
        let svg = format!("<svg>{}</svg>", "<path d='M0 0'/>".repeat(5000));
        assert_eq!(html_depth(&svg, LIMIT), 1);
    }

    #[test]
    fn an_end_tag_closes_only_an_open_element_in_scope() {
        assert_eq!(html_depth(&"<div></x>".repeat(2000), LIMIT), LIMIT + 1);
        // A flood of unmatched end tags (the review used 300k) is linear.
        let flood = format!("{}{}", "<div>".repeat(1000), "</x>".repeat(300_000));
        assert_eq!(html_depth(&flood, LIMIT), 1000);
        // `</div>` cannot reach a div outside a table.
        assert_eq!(
            html_depth(&"<div><table></div>".repeat(600), LIMIT),
            LIMIT + 1
        );
        // A matching end tag closes what is open inside it.
        let unclosed = "<div><span><b>x</div>".repeat(2000);
        assert_eq!(html_depth(&unclosed, LIMIT), 3);
        assert_eq!(html_depth("<table><div><div></table>", LIMIT), 3);
    }

    #[test]
    fn the_stack_is_bounded_by_the_limit() {
        let deep = "<div>".repeat(100_000);
        assert_eq!(html_depth(&deep, 10), 11);
    }
}
