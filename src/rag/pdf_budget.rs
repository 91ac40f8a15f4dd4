//! How many bytes a PDF's drawing streams inflate to, counted once per use,
//! checked before the text extractor decompresses anything. A small file
//! can name one huge FlateDecode stream from every page (or be a zip bomb);
//! the extractor would inflate it each time, in memory.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use pdf_extract::{Dictionary, Document, Object, ObjectId, Stream};

/// Nested Form XObjects followed when counting. Cycles are not followed
/// (the extractor's own recursion is contained by the sandbox's stack).
const MAX_FORM_DEPTH: usize = 16;
/// Each use is charged at least this much, so that many uses of tiny forms
/// (10 names per level, 9 levels) exhaust the budget after a bounded walk.
const MIN_CHARGE: u64 = 4096;

/// `Err(limit)` when the content streams of all pages, plus the Form
/// XObjects their resources name (recursively), inflate to more than
/// `limit` bytes.
pub fn check(doc: &Document, limit: u64) -> Result<(), u64> {
    let mut budget = Budget {
        doc,
        left: limit,
        sizes: HashMap::new(),
    };
    for page in doc.page_iter() {
        for id in doc.get_page_contents(page) {
            budget.spend(id)?;
        }
        if let Ok((own, inherited)) = doc.get_page_resources(page) {
            let mut path = HashSet::new();
            if let Some(res) = own {
                budget.forms(res, &mut path, 0)?;
            }
            for id in inherited {
                if let Ok(res) = doc.get_dictionary(id) {
                    budget.forms(res, &mut path, 0)?;
                }
            }
        }
    }
    Ok(())
}

struct Budget<'a> {
    doc: &'a Document,
    left: u64,
    /// Inflated size of each stream already measured (capped).
    sizes: HashMap<ObjectId, u64>,
}

impl Budget<'_> {
    fn spend(&mut self, id: ObjectId) -> Result<(), u64> {
        let cap = self.left.saturating_add(1);
        let size = match self.sizes.get(&id) {
            Some(&s) => s,
            None => {
                let s = match self.doc.get_object(id).and_then(Object::as_stream) {
                    Ok(stream) => inflated_len(stream, cap),
                    Err(_) => 0,
                };
                self.sizes.insert(id, s);
                s
            }
        };
        self.left = self
            .left
            .checked_sub(size.max(MIN_CHARGE))
            .ok_or(u64::MAX)?;
        Ok(())
    }

    /// Spends on every Form XObject named by `resources`, and theirs.
    fn forms(
        &mut self,
        resources: &Dictionary,
        path: &mut HashSet<ObjectId>,
        depth: usize,
    ) -> Result<(), u64> {
        if depth >= MAX_FORM_DEPTH {
            return Ok(());
        }
        let xobjects = match resources.get(b"XObject") {
            Ok(Object::Reference(id)) => self.doc.get_dictionary(*id).ok(),
            Ok(Object::Dictionary(d)) => Some(d),
            _ => None,
        };
        let Some(xobjects) = xobjects else {
            return Ok(());
        };
        for (_, value) in xobjects.iter() {
            let Ok(id) = value.as_reference() else {
                continue;
            };
            let Ok(stream) = self.doc.get_object(id).and_then(Object::as_stream) else {
                continue;
            };
            let is_form = stream
                .dict
                .get(b"Subtype")
                .and_then(Object::as_name)
                .is_ok_and(|s| s == b"Form");
            if !is_form || !path.insert(id) {
                continue; // images are not drawn as text; a cycle is not followed
            }
            self.spend(id)?;
            let own = match stream.dict.get(b"Resources") {
                Ok(Object::Reference(r)) => self.doc.get_dictionary(*r).ok(),
                Ok(Object::Dictionary(d)) => Some(d),
                _ => None,
            };
            if let Some(res) = own {
                self.forms(res, path, depth + 1)?;
            }
            path.remove(&id);
        }
        Ok(())
    }
}

/// The stream's decoded length, counting at most `cap` bytes. FlateDecode
/// (also chained: a stream deflated twice) is inflated as a stream into
/// nothing; other filters are rare in content streams and are measured by
/// decoding (the sandbox's memory limit bounds that).
pub fn inflated_len(stream: &Stream, cap: u64) -> u64 {
    let filters = stream.filters().unwrap_or_default();
    if filters.is_empty() {
        return stream.content.len() as u64;
    }
    if filters.iter().all(|f| *f == b"FlateDecode") {
        let mut reader: Box<dyn Read + '_> = Box::new(stream.content.as_slice());
        for _ in &filters {
            reader = Box::new(flate2::read::ZlibDecoder::new(reader));
        }
        // A truncated or corrupt stream counts what inflated before the error.
        let mut counted = CountingSink(0);
        let _ = std::io::copy(&mut reader.take(cap), &mut counted);
        return counted.0;
    }
    stream
        .decompressed_content()
        .map_or(stream.content.len(), |d| d.len()) as u64
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn flate(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    /// A document of `pages` pages whose content is the same stream.
    fn shared_stream_doc(pages: usize, inflated: usize) -> Document {
        let mut doc = Document::with_version("1.5");
        let mut dict = Dictionary::new();
        dict.set("Filter", "FlateDecode");
        let content = doc.add_object(Stream::new(dict, flate(&vec![b' '; inflated])));
        let pages_id = doc.new_object_id();
        let kids: Vec<Object> = (0..pages)
            .map(|_| {
                let mut page = Dictionary::new();
                page.set("Type", "Page");
                page.set("Parent", pages_id);
                page.set("Contents", content);
                doc.add_object(page).into()
            })
            .collect();
        let mut tree = Dictionary::new();
        tree.set("Type", "Pages");
        tree.set("Count", pages as i64);
        tree.set("Kids", kids);
        doc.objects.insert(pages_id, Object::Dictionary(tree));
        let mut catalog = Dictionary::new();
        catalog.set("Type", "Catalog");
        catalog.set("Pages", pages_id);
        let catalog = doc.add_object(catalog);
        doc.trailer.set("Root", catalog);
        doc
    }

    #[test]
    fn a_stream_counts_once_per_page_that_uses_it() {
        let doc = shared_stream_doc(10, 10_000);
        assert_eq!(check(&doc, 100_000), Ok(()));
        assert!(check(&doc, 99_999).is_err());
        // Tiny uses are charged a minimum.
        let doc = shared_stream_doc(10, 10);
        assert_eq!(check(&doc, 10 * MIN_CHARGE), Ok(()));
        assert!(check(&doc, 10 * MIN_CHARGE - 1).is_err());
    }

    #[test]
    fn a_bomb_is_measured_without_inflating_past_the_cap() {
        let stream = Stream::new(
            {
                let mut d = Dictionary::new();
                d.set("Filter", "FlateDecode");
                d
            },
            flate(&vec![0u8; 4 << 20]),
        );
        assert_eq!(inflated_len(&stream, 1000), 1000);
        assert_eq!(inflated_len(&stream, u64::MAX), 4 << 20);
        // Deflated twice: both layers are inflated as streams.
        let mut twice = Dictionary::new();
        twice.set(
            "Filter",
            vec![Object::from("FlateDecode"), Object::from("FlateDecode")],
        );
        let stream = Stream::new(twice, flate(&flate(&vec![b' '; 1 << 20])));
        assert_eq!(inflated_len(&stream, 5000), 5000);
        assert_eq!(inflated_len(&stream, u64::MAX), 1 << 20);
    }
}
