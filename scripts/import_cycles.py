#!/usr/bin/env python3
"""Import cycles between the files of a folder (docs/architecture.md).

An edge A -> B means file A names an item defined in (or re-exported by)
file B of the same folder; a child folder counts as one node, the folder's
mod.rs (or FOLDER.rs) as the node `mod`. Modules are found by following
`mod NAME;` from src/lib.rs, so `#[path]` and inline `mod NAME { }` resolve.

    python3 scripts/import_cycles.py [-v] [src/FOLDER...]   # default: every folder

Prints each strongly connected component of more than one node and exits 1
if there is any; -v also prints every edge.
"""
import os
import re
import sys

TOKEN = re.compile(
    r'(?P<str>"(?:\\.|[^"\\])*")|(?P<skip>//[^\n]*|/\*.*?\*/|b?r(?P<h>#*)".*?"(?P=h)|b"(?:\\.|[^"\\])*"'
    r"|b?'(?:\\.|[^'\\])'|'[A-Za-z_]\w*)"
    r'|(?P<path>(?:\$?[A-Za-z_]\w*\s*::\s*)+(?:[A-Za-z_]\w*|\{|\*))'
    r'|(?P<word>[A-Za-z_]\w*)|(?P<punct>[{};#\[\]()=])', re.S)


def tokens(text):
    """Words, `a::b::c` paths and punctuation; comments and literals dropped."""
    for m in TOKEN.finditer(text):
        if m.group('path'):
            yield 'path', re.sub(r'\s+', '', m.group('path'))
        elif m.group('word'):
            yield 'word', m.group('word')
        elif m.group('str'):
            yield 'str', m.group('str')[1:-1]
        elif m.group('punct'):
            yield 'punct', m.group('punct')


def use_paths(toks, i, prefix=''):
    """Expand the use tree starting at toks[i]; returns (paths, next index)."""
    out = []
    while i < len(toks):
        kind, val = toks[i]
        if kind == 'punct' and val in ';}':
            return out, i
        if kind == 'path' and val.endswith('{'):
            inner, i = use_paths(toks, i + 1, prefix + val[:-1])
            out += inner
        elif kind in ('path', 'word') and val not in ('as', 'pub', 'use'):
            out.append(prefix + val)
            if i + 2 < len(toks) and toks[i + 1] == ('word', 'as'):
                i += 2
        i += 1
    return out, i


def scan(path):
    """(declared children {name: file path or None}, [(module offset, path)])."""
    toks = list(tokens(open(path, encoding='utf-8').read()))
    children, refs, stack, depth, attr_path = {}, [], [], 0, None
    for i, (kind, val) in enumerate(toks):
        if kind == 'punct' and val == '{':
            depth += 1
        elif kind == 'punct' and val == '}':
            depth -= 1
            if stack and stack[-1][1] == depth:
                stack.pop()
        elif (kind, val) == ('word', 'path') and toks[i + 1:i + 2] == [('punct', '=')]:
            attr_path = toks[i + 2][1]
        elif (kind, val) == ('word', 'mod') and i + 2 < len(toks) and toks[i + 1][0] == 'word':
            name, nxt = toks[i + 1][1], toks[i + 2]
            mods = tuple(s[0] for s in stack)
            if nxt == ('punct', ';'):
                children[mods + (name,)] = attr_path
                attr_path = None
            elif nxt == ('punct', '{'):
                stack.append((name, depth))
                children[mods + (name,)] = 'inline'
        elif (kind, val) == ('word', 'use'):
            for p in use_paths(toks, i + 1)[0]:
                refs.append((tuple(s[0] for s in stack), p))
        elif kind == 'path' and not (i and toks[i - 1] == ('word', 'use')):
            refs.append((tuple(s[0] for s in stack), val))
    return children, refs


def walk(src):
    """{module path tuple: (file, children, refs)} from src/lib.rs down."""
    mods, todo = {}, [((), os.path.join(src, 'lib.rs'))]
    while todo:
        mod, path = todo.pop()
        children, refs = scan(path)
        mods[mod] = (path, children, refs)
        here = os.path.dirname(path)
        own = here if os.path.basename(path) in ('lib.rs', 'mod.rs') else path[:-3]
        for inner, attr in children.items():
            if attr == 'inline':
                mods.setdefault(mod + inner, (path, {}, []))
                continue
            if attr:
                todo.append((mod + inner, os.path.join(here, attr)))
                continue
            base = os.path.join(own, *inner)
            for cand in (base + '.rs', os.path.join(base, 'mod.rs')):
                if os.path.exists(cand):
                    todo.append((mod + inner, cand))
                    break
    return mods


def resolve(mods, mod, inner, path):
    """The absolute module path a reference names, or None if external."""
    segs = path.split('::')
    cur = list(mod + inner)
    if segs[0] == 'crate':
        cur, segs = [], segs[1:]
    elif segs[0] in ('super', 'self'):
        while segs and segs[0] in ('super', 'self'):
            if segs.pop(0) == 'super':
                cur.pop()
    elif tuple(cur + [segs[0]]) not in mods:
        return None
    return tuple(cur + segs)


def edges(mods, folder):
    """File-level edges among the child modules of `folder` (a module path)."""
    out = set()
    n = len(folder)
    for mod, (_, _, refs) in mods.items():
        if mod[:n] != folder:
            continue
        src = mod[n] if len(mod) > n else 'mod'
        for inner, ref in refs:
            target = resolve(mods, mod, inner, ref)
            if not target or target[:n] != folder or len(target) == n:
                continue
            dst = target[n] if folder + target[n:n + 1] in mods else 'mod'
            if dst != src:
                out.add((src, dst))
    return out


def sccs(nodes, es):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out, succ = {}, {}, [], set(), [], {}
    for a, b in es:
        succ.setdefault(a, []).append(b)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def folder_of(mods, arg):
    """The module path of a folder given as a directory (src/cli/bench)."""
    arg = os.path.normpath(arg)
    for mod, (path, _, _) in mods.items():
        if os.path.normpath(os.path.dirname(path)) == arg and path.endswith(('mod.rs', 'lib.rs')):
            return mod
        if os.path.normpath(path[:-3]) == arg:
            return mod
    sys.exit(f'import_cycles: no module for folder {arg}')


def main(argv):
    verbose = '-v' in argv
    args = [a for a in argv if a != '-v']
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
    mods = walk('src')
    if args:
        folders = [folder_of(mods, a) for a in args]
    else:
        folders = sorted({m[:-1] for m in mods if m and mods[m][0] != mods[m[:-1]][0]})
    bad = 0
    for folder in folders:
        es = edges(mods, folder)
        name = '/'.join(('src',) + folder)
        if verbose:
            for a, b in sorted(es):
                print(f'{name}: {a} -> {b}')
        nodes = {a for e in es for a in e}
        for comp in sccs(nodes, es):
            if len(comp) > 1:
                bad += 1
                print(f'{name}: cycle of {len(comp)}: {" ".join(comp)}')
    print(f'import_cycles: {len(folders)} folders, {bad} cycles')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
