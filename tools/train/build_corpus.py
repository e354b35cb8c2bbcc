#!/usr/bin/env python3
"""Builds an English training corpus from documentation that Debian packages install.

    build_corpus.py OUT_DIR [--max-mb 56] [--test-fraction 0.02] [--seed 20261129] [--jobs 2]

Writes OUT_DIR/train.txt, OUT_DIR/test.txt and OUT_DIR/manifest.json. Documents in the text files are
separated by the literal string <|endoftext|> (every document ends with a newline, and no document
contains a Qwen special-token string); the tokenizer step turns each separator into the end-of-text id.

Sources (each is used when its package is installed; missing ones are listed in the manifest):

  python-docs       python3.11-doc        Python 3.11 documentation, HTML rendered to text   PSF-2.0
  postgresql-docs   postgresql-doc-15     PostgreSQL 15 manual, HTML to text                  PostgreSQL
  sqlite-docs       sqlite3-doc           SQLite documentation, HTML to text                  public domain
  perl-docs         perl-doc              Perl core documentation, POD via pod2text           GPL-1+ or Artistic
  vim-help          vim-runtime           Vim's help files                                    Vim licence
  git-docs          git-doc               Git's manuals and how-tos (AsciiDoc sources)        GPL-2
  debian-reference  debian-reference-en   the Debian Reference, HTML to text                  GPL-2+
  man-pages         (every package)       section 1-8 manual pages rendered with man(1)       per package
  fortunes          fortunes, fortunes-min  fortune(6) quotations, one document each        BSD (see manifest)
  licenses          base-files            /usr/share/common-licenses                          verbatim copying

Only packages that a Debian archive publishes in its `main` component (apt-cache policy) are used,
so every text is DFSG-free and redistributable; each package's licences, read from its
/usr/share/doc/PKG/copyright, are recorded in the manifest. To install the recommended set:

  apt-get install python3.11-doc postgresql-doc-15 sqlite3-doc perl-doc vim-runtime git-doc \\
      debian-reference-en fortunes fortunes-min man-db manpages manpages-dev

Cleaning: HTML navigation and scripts dropped, man pages rendered without hyphenation or
justification (header and footer lines dropped), NFC, control characters removed, e-mail addresses
replaced by <email>, runs of blank lines collapsed, documents that are mostly non-letters or very
short dropped, exact duplicates (whitespace- and case-insensitive) and repeated long paragraphs
dropped. Then every source is capped (see SOURCES) and the documents are shuffled with --seed;
about --test-fraction of the bytes (whole documents) go to test.txt.
"""
import argparse
import collections
import concurrent.futures
import glob
import gzip
import hashlib
import html.parser
import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata

DOC_SEPARATOR = "<|endoftext|>"
# Strings the Qwen tokenizer would turn into added tokens; they must not appear inside documents.
QWEN_TOKEN_STRINGS = re.compile(r"<\|[a-z_]+\|>|</?think>|</?tool_call>|</?tool_response>")

MiB = 1 << 20


class Source:
    def __init__(self, name, kind, patterns, packages, licence, description, exclude=(), cap_mb=None,
                 min_chars=300, html_main=None, drop_lines=None):
        self.name = name
        self.kind = kind                # html, man, pod, text, fortune
        self.patterns = patterns        # glob patterns (recursive ** allowed)
        self.packages = packages        # the packages expected to own the files (for the manifest)
        self.licence = licence          # what the upstream copyright says, summarised
        self.description = description
        self.exclude = re.compile(exclude) if isinstance(exclude, str) else None
        self.cap_bytes = int(cap_mb * MiB) if cap_mb else None
        self.min_chars = min_chars
        self.html_main = html_main      # (attribute, value) marking the main content, or None
        self.drop_lines = re.compile(drop_lines) if drop_lines else None  # lines to remove (full match)


SOURCES = [
    Source("python-docs", "html", ["/usr/share/doc/python3.11/html/**/*.html"], ["python3.11-doc"],
           "PSF-2.0 (Python Software Foundation License; code examples 0BSD)",
           "Python 3.11 documentation: tutorial, library and language reference, HOWTOs, FAQ",
           exclude=r"/(genindex|py-modindex|search|contents|download|copyright|license|bugs)[^/]*\.html$"
                   r"|/whatsnew/changelog\.html$|/_static/|/_sources/",
           cap_mb=14, html_main=("role", "main")),
    Source("postgresql-docs", "html", ["/usr/share/doc/postgresql-doc-*/html/*.html"], ["postgresql-doc-15"],
           "PostgreSQL (BSD-style permissive licence)", "PostgreSQL 15 manual",
           exclude=r"/(bookindex|release-\d)[^/]*\.html$", cap_mb=10),
    Source("sqlite-docs", "html", ["/usr/share/doc/sqlite3/**/*.html"], ["sqlite3-doc"],
           "public-domain", "SQLite documentation",
           exclude=r"/(releaselog/|changes\.html|chronology\.html|sitemap\.html|keyword_index\.html|"
                   r"doclist\.html|toc\.html)", cap_mb=6,
           drop_lines=r"[\w-]+:|This page last modified on .*|Small\. Fast\. Reliable\.|Choose any three\."),
    Source("perl-docs", "pod", ["/usr/share/perl/5.*/pod/*.pod"], ["perl-doc"],
           "GPL-1+ or Artistic", "Perl 5 core documentation (perlfunc, perlop, perlre, FAQs, ...)",
           exclude=r"/perl5\d+delta\.pod$|/perl5\d*delta\.pod$|/perlhist\.pod$", cap_mb=7),
    Source("vim-help", "text", ["/usr/share/vim/vim*/doc/*.txt"], ["vim-runtime"],
           "Vim licence (GPL-compatible charityware)", "Vim's help files", cap_mb=7),
    Source("git-docs", "text", ["/usr/share/doc/git-doc/**/*.txt"], ["git-doc"],
           "GPL-2 (git documentation)", "Git manuals, user manual, how-tos and technical notes",
           exclude=r"/RelNotes/|/cmds-[^/]*\.txt$|/RelNotes-", cap_mb=3),
    Source("debian-reference", "html", ["/usr/share/debian-reference/*.en.html"], ["debian-reference-en"],
           "GPL-2+", "The Debian Reference (English)", cap_mb=3),
    Source("man-pages", "man", ["/usr/share/man/man[1-8]/*"], [],
           "per package (see packages)", "Manual pages, sections 1-8, rendered by man(1)",
           cap_mb=18, min_chars=400),
    # Left out: ASCII art, non-English, dated stereotypes, and songs-poems (song lyrics).
    Source("fortunes", "fortune", ["/usr/share/games/fortunes/*"], ["fortunes", "fortunes-min"],
           "BSD-3-Clause (fortune-mod package); quotations are short excerpts from many authors",
           "fortune(6) quotations and jokes, one document each",
           exclude=r"\.(dat|u8)$|/(ascii-art|art|ethnic|men-women|translate-me|knghtbrd|drugs|songs-poems)$",
           cap_mb=2, min_chars=40),
    Source("licenses", "text", ["/usr/share/common-licenses/*"], ["base-files"],
           "verbatim copying and distribution permitted (licence texts)",
           "The licence texts Debian ships in /usr/share/common-licenses", cap_mb=1),
]

# Packages whose man pages duplicate another source (or are not documentation for people).
MAN_PACKAGE_DENY = {"perl-doc", "git-man", "google-cloud-cli", "google-cloud-sdk", "libtorch-dev"}
MAN_PACKAGE_CAP_BYTES = int(1.5 * MiB)


# ---------------------------------------------------------------------------------------------------------
# Packages and licences


def dpkg_file_index():
    """Maps every file path dpkg knows to its package (without the :arch suffix)."""
    index = {}
    for list_path in glob.glob("/var/lib/dpkg/info/*.list"):
        package = os.path.basename(list_path)[:-len(".list")].split(":")[0]
        try:
            with open(list_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    index[line.rstrip("\n")] = package
        except OSError:
            continue
    return index


def package_owner(index, path):
    if path in index:
        return index[path]
    real = os.path.realpath(path)
    if real in index:
        return index[real]
    # A file under a symlinked directory (e.g. /usr/share/doc/X -> Y): dpkg lists the link's target.
    parent, name = os.path.split(path)
    real_parent = os.path.realpath(parent)
    return index.get(os.path.join(real_parent, name))


_MAIN_ORIGIN = re.compile(r"^\s+\d+\s+\S+\s+\S+/main\s", re.M)


def debian_main_packages(packages):
    """The subset of `packages` that a Debian archive publishes in its `main` component (so DFSG-free
    and redistributable; a package from elsewhere, known only to dpkg, is refused), and each one's
    installed version."""
    packages = sorted(set(packages))
    versions = {}
    ok = set()
    for start in range(0, len(packages), 200):
        chunk = packages[start:start + 200]
        try:
            out = subprocess.run(["apt-cache", "policy", *chunk], capture_output=True, text=True,
                                 timeout=120).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for block in re.split(r"^(?=\S[^\n]*:\n)", out, flags=re.M):
            head = block.split(":", 1)[0].strip()
            if head not in chunk:
                continue
            m = re.search(r"^\s+Installed:\s*(\S+)", block, re.M)
            if not m or m.group(1) == "(none)":
                continue
            versions[head] = m.group(1)
            # Published in a Debian `main` component (the installed version itself may be an older or
            # newer point release than the archive holds today).
            if _MAIN_ORIGIN.search(block):
                ok.add(head)
    return ok, versions


def package_licences(package):
    """Short licence names from the package's DEP-5 copyright file (or a guess from plain text)."""
    path = f"/usr/share/doc/{package}/copyright"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    names = collections.Counter()
    for m in re.finditer(r"^License:[ \t]*(\S[^\n]*)$", text, re.M):
        value = m.group(1).strip()
        if len(value) <= 60:
            names[value] += 1
    if names:
        return [n for n, _ in names.most_common(6)]
    guesses = []
    for pattern, name in [(r"GNU General Public License", "GPL"), (r"Lesser General Public", "LGPL"),
                          (r"BSD|Regents of the University", "BSD"), (r"public domain", "public-domain"),
                          (r"Python Software Foundation|PSF", "PSF-2.0"), (r"MIT|Permission is hereby granted",
                                                                           "MIT-style")]:
        if re.search(pattern, text, re.I):
            guesses.append(name)
    return guesses or ["see copyright file"]


# ---------------------------------------------------------------------------------------------------------
# Readers: path -> raw text


def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


class HtmlText(html.parser.HTMLParser):
    """HTML to plain text: block elements become line breaks, <pre> keeps its layout, navigation and
    scripts are dropped; with `main` = (attribute, value), only that element's contents are kept."""

    BLOCK = {"p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "li",
             "dt", "dd", "table", "tr", "blockquote", "pre", "hr", "br", "figure", "figcaption", "caption",
             "thead", "tbody", "tfoot", "form", "header", "footer", "main"}
    PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre",
                 "hr", "figure", "section"}
    VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track",
            "wbr", "param"}
    SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "svg", "button", "select", "textarea", "map"}
    SKIP_CLASS = re.compile(r"\b(navheader|navfooter|related|sphinxsidebar|footer|headerlink|menu|"
                            r"breadcrumb|toc|fancy-toc\d|inline-search|searchbox|mobile-nav|"
                            r"version_switcher_placeholder|language_switcher_placeholder|"
                            r"clearer|nav|topmenu|submenu|fancy_toc|tagline|nosearch|imgcontainer)\b")

    def __init__(self, main=None):
        super().__init__(convert_charrefs=True)
        self.main = main
        self.stack = []          # open element names
        self.skip_depth = None   # stack depth at which a skipped element opened
        self.main_depth = None   # stack depth of the main element, once inside it
        self.main_done = False   # only the first main element counts
        self.pre = 0
        self.out = []
        self.pending = 0         # newlines owed before the next text
        self.at_line_start = True
        self.bullet = False      # a list item's "- " is owed before its first text

    def _inside(self):
        return self.skip_depth is None and (self.main is None or self.main_depth is not None)

    def _break(self, n):
        if self._inside():
            if n > 1 and "li" in self.stack:
                n = 1  # paragraphs inside a list item keep the list tight
            self.pending = max(self.pending, n)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.BLOCK:
            self._break(2 if tag in self.PARAGRAPH else 1)
        if tag == "li" and self._inside():
            self.bullet = True
        if tag in ("td", "th") and self._inside() and not self.at_line_start:
            self._emit("  ")
        if tag in self.VOID:
            return
        self.stack.append(tag)
        depth = len(self.stack)
        if self.skip_depth is None:
            cls = " ".join(filter(None, [attrs.get("class"), attrs.get("id"), attrs.get("role")]))
            if tag in self.SKIP_TAGS or (cls and self.SKIP_CLASS.search(cls)):
                self.skip_depth = depth
        if self.main is not None and self.main_depth is None and not self.main_done:
            if attrs.get(self.main[0]) == self.main[1]:
                self.main_depth = depth
        if tag == "pre":
            self.pre += 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID or tag not in self.stack:
            return
        while self.stack:
            depth = len(self.stack)
            top = self.stack.pop()
            if top == "pre":
                self.pre = max(0, self.pre - 1)
            if self.skip_depth is not None and depth <= self.skip_depth:
                self.skip_depth = None
            if self.main_depth is not None and depth <= self.main_depth:
                self.main_depth = None
                self.main_done = True
            if top in self.BLOCK:
                self._break(2 if top in self.PARAGRAPH else 1)
            if top == tag:
                break

    def _emit(self, text):
        if self.pending and self.out:
            self.out.append("\n" * self.pending)
            self.at_line_start = True
        self.pending = 0
        if self.bullet:
            text = "- " + text.lstrip()
            self.bullet = False
        self.out.append(text)
        self.at_line_start = text.endswith("\n")

    def handle_data(self, data):
        if not self._inside():
            return
        if self.pre:
            self._emit(data)
            return
        text = re.sub(r"\s+", " ", data)
        if self.at_line_start or self.pending:
            text = text.lstrip()
        if text:
            self._emit(text)

    def text(self):
        return "".join(self.out)


def html_to_text(raw, main=None):
    parser = HtmlText(main)
    parser.feed(raw.decode("utf-8", errors="replace"))
    parser.close()
    text = parser.text()
    return text.replace("\u00b6", "")  # Sphinx's pilcrow anchors


def render_man(path):
    """A manual page as man(1) shows it at 80 columns, without hyphenation or justification; None for
    pages that only include another (.so) or fail to render."""
    head = read_bytes(path)[:200]
    if head.startswith(b".so ") and head.count(b"\n") <= 2:
        return None
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LANG="C.UTF-8", LC_ALL="C.UTF-8",
               MANOPT="", GROFF_NO_SGR="1")
    try:
        r = subprocess.run(["man", "-l", "--nh", "--nj", "-E", "UTF-8", path], capture_output=True,
                           env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or not r.stdout:
        return None
    text = r.stdout.decode("utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)  # overstrike, should `col -b` have been needed
    lines = text.split("\n")
    # Header "ls(1)   User Commands   ls(1)" and footer "GNU coreutils 9.1   September 2022   ls(1)".
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > 2:
        lines = lines[1:-1]
    return "\n".join(lines)


def render_pod(path):
    try:
        r = subprocess.run(["pod2text", "--width", "78", path], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.decode("utf-8", errors="replace")


def split_fortunes(raw):
    text = raw.decode("utf-8", errors="replace")
    return [f.strip("\n") for f in re.split(r"^%[ \t]*$", text, flags=re.M) if f.strip()]


# ---------------------------------------------------------------------------------------------------------
# Cleaning


EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")


def clean_text(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = unicodedata.normalize("NFC", text)
    text = CONTROL.sub("", text)
    text = EMAIL.sub("<email>", text)
    text = QWEN_TOKEN_STRINGS.sub(lambda m: m.group(0).replace("<", "< ", 1), text)
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text else ""


def looks_like_prose(text, min_chars):
    if len(text) < min_chars:
        return False
    non_space = sum(1 for c in text if not c.isspace())
    if non_space == 0:
        return False
    letters = sum(1 for c in text if c.isalpha())
    if letters / non_space < 0.45:
        return False
    if text.count("\ufffd") > 3:
        return False
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return non_ascii / len(text) < 0.05


def doc_key(text):
    return hashlib.sha1(re.sub(r"\s+", " ", text).strip().lower().encode()).hexdigest()


def drop_repeated_paragraphs(text, seen):
    """Removes paragraphs of 200+ characters already seen in an earlier document (licence blurbs,
    copyright sections, shared boilerplate)."""
    out = []
    for para in text.split("\n\n"):
        norm = re.sub(r"\s+", " ", para).strip().lower()
        if len(norm) >= 200:
            h = hashlib.sha1(norm.encode()).digest()
            if h in seen:
                continue
            seen.add(h)
        out.append(para)
    return "\n\n".join(out)


def drop_boilerplate_lines(docs, min_docs=10, fraction=0.4):
    """Within one HTML source, removes lines that recur in most of its pages (navigation leftovers)."""
    counts = collections.Counter()
    for _, text in docs:
        counts.update(set(line.strip() for line in text.split("\n") if line.strip()))
    limit = max(min_docs, int(fraction * len(docs)))
    common = {line for line, n in counts.items() if n >= limit}
    if not common:
        return docs, []
    out = []
    for path, text in docs:
        kept = [line for line in text.split("\n") if line.strip() not in common]
        out.append((path, "\n".join(kept)))
    return out, sorted(common)


# ---------------------------------------------------------------------------------------------------------
# Collection


def list_files(source):
    paths = set()
    for pattern in source.patterns:
        for path in glob.glob(pattern, recursive=True):
            if os.path.isfile(path) and not (source.exclude and source.exclude.search(path)):
                paths.add(path)
    # One path per file when a directory is reachable twice (/usr/share/perl/5.36 -> 5.36.0).
    by_real = {}
    for path in sorted(paths):
        real = os.path.realpath(path)
        if real not in by_real or path == real:
            by_real[real] = path
    paths = set(by_real.values())
    if source.kind == "fortune":
        # fortunes ships NAME and NAME.u8 (a symlink): keep regular files only.
        paths = {p for p in paths if not os.path.islink(p)}
    return sorted(paths)


def extract(source, path):
    """(path, [raw documents]) for one file."""
    try:
        if source.kind == "man":
            text = render_man(path)
            return [text] if text else []
        if source.kind == "pod":
            text = render_pod(path)
            return [text] if text else []
        raw = read_bytes(path)
        if source.kind == "html":
            text = html_to_text(raw, source.html_main)
            if source.drop_lines:
                text = "\n".join(l for l in text.split("\n") if not source.drop_lines.fullmatch(l.strip()))
            return [text]
        if source.kind == "fortune":
            return split_fortunes(raw)
        return [raw.decode("utf-8", errors="replace")]
    except (OSError, EOFError, ValueError):
        return []


def source_files(source, index, main_ok, seed):
    """The files of one source that may be used, in a seeded random order, and each one's package."""
    files = list_files(source)
    owners = {path: package_owner(index, path) for path in files}
    kept, refused = [], collections.Counter()
    for path in files:
        pkg = owners[path]
        if pkg is None or pkg not in main_ok or (source.kind == "man" and pkg in MAN_PACKAGE_DENY):
            refused[pkg or "(no package)"] += 1
            continue
        kept.append(path)
    if source.kind == "man":
        # Links and .so stubs repeat other pages; one page per (package, name, section).
        by_stem = {}
        for path in kept:
            if os.path.islink(path):
                continue
            stem = (owners[path], os.path.basename(path).split(".")[0], os.path.basename(os.path.dirname(path)))
            by_stem.setdefault(stem, path)
        kept = sorted(by_stem.values())
    random.Random(f"{seed}:{source.name}").shuffle(kept)
    return kept, owners, refused


def iter_documents(source, files, jobs):
    """(path, raw text) for every document of `files`, in order, extracted `jobs` at a time and lazily,
    so a capped source renders only what it uses. HTML sources are read whole first, to find the lines
    that recur on most pages (navigation leftovers); the second value lists those."""
    if source.kind == "html":
        docs = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for path, texts in zip(files, pool.map(lambda p: extract(source, p), files)):
                docs.extend((path, t) for t in texts)
        docs, boiler = drop_boilerplate_lines(docs)
        return iter(docs), boiler

    def generate():
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            step = 8 * max(1, jobs)
            for start in range(0, len(files), step):
                chunk = files[start:start + step]
                for path, texts in zip(chunk, pool.map(lambda p: extract(source, p), chunk)):
                    for i, text in enumerate(texts):
                        yield (path if len(texts) == 1 else f"{path}#{i}", text)
    return generate(), []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--max-mb", type=float, default=56.0, help="cap on train+test text, MiB (default 56)")
    ap.add_argument("--test-fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel renderers (man, pod2text)")
    ap.add_argument("--sources", default="", help="comma-separated subset of source names (default: all)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    wanted = set(filter(None, args.sources.split(",")))
    sources = [s for s in SOURCES if not wanted or s.name in wanted]
    log("build_corpus: indexing dpkg's file lists")
    index = dpkg_file_index()
    candidate_packages = set()
    for s in sources:
        for path in list_files(s):
            pkg = package_owner(index, path)
            if pkg:
                candidate_packages.add(pkg)
    main_ok, versions = debian_main_packages(candidate_packages)
    log(f"build_corpus: {len(candidate_packages)} packages own candidate files, {len(main_ok)} from Debian main")

    seen_docs, seen_paras = set(), set()
    documents = []  # (source name, path, package, text)
    manifest_sources = []
    for source in sources:
        t0 = time.time()
        files, owners, refused = source_files(source, index, main_ok, args.seed)
        docs, boiler = iter_documents(source, files, args.jobs)
        per_package_bytes = collections.Counter()
        kept, size = [], 0
        dropped = collections.Counter()
        for path, raw in docs:
            text = clean_text(raw)
            if source.kind != "fortune":
                text = clean_text(drop_repeated_paragraphs(text, seen_paras))
            if not looks_like_prose(text, source.min_chars):
                dropped["short or not prose"] += 1
                continue
            key = doc_key(text)
            if key in seen_docs:
                dropped["duplicate"] += 1
                continue
            n = len(text.encode())
            pkg = owners.get(path.split("#")[0])
            if source.kind == "man" and per_package_bytes[pkg] + n > MAN_PACKAGE_CAP_BYTES:
                dropped["package cap"] += 1
                continue
            if source.cap_bytes is not None and size + n > source.cap_bytes:
                dropped["source cap"] += 1
                if size > 0.995 * source.cap_bytes:
                    break  # full: render no more
                continue
            seen_docs.add(key)
            per_package_bytes[pkg] += n
            size += n
            kept.append((source.name, path, pkg, text))
        log(f"  {source.name}: {len(files)} files in {time.time() - t0:.1f} s"
            + (f"; refused (not Debian main, or denied): {dict(refused.most_common(6))}" if refused else ""))
        documents.extend(kept)
        packages = collections.Counter(d[2] for d in kept)
        bytes_by_pkg = collections.Counter()
        for d in kept:
            bytes_by_pkg[d[2]] += len(d[3].encode())
        expected_missing = [p for p in source.packages if p not in versions]
        manifest_sources.append({
            "name": source.name,
            "description": source.description,
            "licence": source.licence,
            "packages": [{"package": p, "version": versions.get(p), "licences": package_licences(p),
                          "documents": packages[p], "bytes": bytes_by_pkg[p]}
                         for p in sorted(packages, key=lambda p: -bytes_by_pkg[p])],
            "missing_packages": expected_missing,
            "documents": len(kept),
            "bytes": sum(bytes_by_pkg.values()),
            "dropped": dict(dropped),
            "boilerplate_lines_removed": boiler[:50],
        })
        log(f"  {source.name}: kept {len(kept)} documents, {sum(bytes_by_pkg.values()) / MiB:.2f} MiB"
            + (f" (dropped {dict(dropped)})" if dropped else "")
            + (f"; MISSING packages {expected_missing}" if expected_missing else ""))

    # Global cap, then a seeded shuffle by document and the held-out split.
    documents.sort(key=lambda d: (d[0], d[1]))
    rng = random.Random(args.seed)
    rng.shuffle(documents)
    total = sum(len(d[3].encode()) for d in documents)
    cap = int(args.max_mb * MiB)
    if total > cap:
        kept, size = [], 0
        for d in documents:
            n = len(d[3].encode())
            if size + n <= cap:
                kept.append(d)
                size += n
        log(f"build_corpus: {total / MiB:.1f} MiB over the {args.max_mb} MiB cap: kept {len(kept)} of "
            f"{len(documents)} documents")
        documents = kept
        total = size
    test_target = args.test_fraction * total
    test, train, test_bytes = [], [], 0
    for d in documents:
        n = len(d[3].encode())
        # Whole documents; none larger than a tenth of the test set, so one manual cannot dominate it.
        if test_bytes < test_target and n <= max(test_target / 10, 4096):
            test.append(d)
            test_bytes += n
        else:
            train.append(d)

    def write(path, docs):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for d in docs:
                f.write(d[3])
                f.write(DOC_SEPARATOR)
        return os.path.getsize(path)

    train_size = write(os.path.join(args.out, "train.txt"), train)
    test_size = write(os.path.join(args.out, "test.txt"), test)
    split_of = {}
    for split, docs in (("train", train), ("test", test)):
        for d in docs:
            split_of.setdefault(d[0], collections.Counter())[split] += len(d[3].encode())
    for s in manifest_sources:
        s["train_bytes"] = split_of.get(s["name"], {}).get("train", 0)
        s["test_bytes"] = split_of.get(s["name"], {}).get("test", 0)
        s["documents_in_corpus"] = sum(1 for d in documents if d[0] == s["name"])
    manifest = {
        "format": "documents separated by the literal string " + DOC_SEPARATOR,
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "max_mb": args.max_mb,
        "train": {"file": "train.txt", "bytes": train_size, "documents": len(train)},
        "test": {"file": "test.txt", "bytes": test_size, "documents": len(test)},
        "sha256": {name: hashlib.sha256(open(os.path.join(args.out, name), "rb").read()).hexdigest()
                   for name in ("train.txt", "test.txt")},
        "cleaning": ["HTML to text (navigation, scripts and page-wide boilerplate dropped)",
                     "man pages rendered by man(1) at 80 columns without hyphenation or justification",
                     "POD rendered by pod2text", "NFC", "control characters removed",
                     "e-mail addresses replaced by <email>", "Qwen special-token strings defused ('< |')",
                     "trailing spaces removed, blank-line runs collapsed",
                     "documents with < 45% letters, > 5% non-ASCII or below the source's minimum length dropped",
                     "exact duplicate documents and repeated paragraphs (>= 200 chars) dropped",
                     "only packages whose installed version comes from a Debian main archive"],
        "sources": manifest_sources,
        "seconds": round(time.time() - t_start, 1),
    }
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    log(f"build_corpus: train.txt {train_size / MiB:.2f} MiB ({len(train)} documents), test.txt "
        f"{test_size / MiB:.2f} MiB ({len(test)} documents) in {time.time() - t_start:.0f} s -> {args.out}")
    return manifest


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
