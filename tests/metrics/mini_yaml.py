"""A strict reader for the YAML subset that deploy/prometheus/*.yml use (the tests' Python has no PyYAML).

Supported: block mappings and sequences (a sequence may sit at its key's indentation), plain, 'single' and
"double" quoted scalars, block scalars (|, |-, |+, >, >-, >+), comments, a leading `---`, and the flow
forms [] and {} and [a, "b", 'c'] (scalars only). Every scalar is returned as a str (no type
conversion: the checks only read text). Anything else (anchors, aliases, tags, multi-line plain or
quoted scalars, flow mappings with content, several documents) raises YamlError with a line number,
so a construct this reader does not know is never silently misread. promtool parses the same files
fully; this reader only serves the repository's own consistency checks.
"""

import re

_KEY_PLAIN = re.compile(r"^([^\s'\"\[\]{}#&*!|>%@`,?:-][^#]*?|-[^\s#][^#]*?)\s*:(?:\s+|$)")


class YamlError(ValueError):
    pass


def load(text, name="<yaml>"):
    """Parses text; returns dict / list / str / None."""
    return _Parser(text, name).document()


def load_file(path):
    with open(path, encoding="utf-8") as f:
        return load(f.read(), str(path))


def _indent_of(line):
    return len(line) - len(line.lstrip(" "))


def _is_blank(line):
    s = line.strip()
    return s == "" or s.startswith("#")


def _is_seq_entry(content):
    return content == "-" or content.startswith("- ") or content.startswith("-\t")


class _Parser:
    def __init__(self, text, name):
        self.name = name
        self.lines = text.split("\n")
        for n, line in enumerate(self.lines):
            body = line[: len(line) - len(line.lstrip(" \t"))]
            if "\t" in body:
                raise YamlError(f"{name}:{n + 1}: tab in indentation")
        self.i = 0

    def error(self, msg, line=None):
        return YamlError(f"{self.name}:{(self.i if line is None else line) + 1}: {msg}")

    def eof(self):
        return self.i >= len(self.lines)

    def skip_blank(self):
        while not self.eof() and _is_blank(self.lines[self.i]):
            self.i += 1

    def document(self):
        self.skip_blank()
        if not self.eof() and self.lines[self.i].rstrip() == "---":
            self.i += 1
            self.skip_blank()
        if self.eof():
            return None
        indent = _indent_of(self.lines[self.i])
        node = self.node(indent)
        self.skip_blank()
        if not self.eof():
            raise self.error("unexpected content (a second document or bad indentation)")
        return node

    def node(self, indent):
        content = self.lines[self.i][indent:]
        if _is_seq_entry(content):
            return self.sequence(indent)
        if self.split_key(content) is not None:
            return self.mapping(indent)
        value = self.scalar_value(content.strip(), indent - 1)
        return value

    def sequence(self, indent):
        items = []
        while True:
            self.skip_blank()
            if self.eof():
                break
            line = self.lines[self.i]
            ind = _indent_of(line)
            content = line[ind:]
            if ind < indent or (ind == indent and not _is_seq_entry(content)):
                break
            if ind > indent:
                raise self.error("unexpected indentation in a sequence")
            rest = content[1:]
            stripped = rest.lstrip(" ")
            if stripped == "" or stripped.startswith("#"):
                self.i += 1
                self.skip_blank()
                if self.eof() or _indent_of(self.lines[self.i]) <= indent:
                    items.append(None)
                else:
                    items.append(self.node(_indent_of(self.lines[self.i])))
                continue
            item_indent = indent + 1 + (len(rest) - len(stripped))
            if _is_seq_entry(stripped) or self.split_key(stripped) is not None:
                # "- key: value" starts a mapping (or "- - x" a sequence) at the item's column.
                self.lines[self.i] = " " * item_indent + stripped
                items.append(self.node(item_indent))
            else:
                items.append(self.scalar_value(stripped, indent))
        return items

    def mapping(self, indent):
        out = {}
        while True:
            self.skip_blank()
            if self.eof():
                break
            line = self.lines[self.i]
            ind = _indent_of(line)
            if ind < indent:
                break
            if ind > indent:
                raise self.error("unexpected indentation in a mapping")
            content = line[ind:]
            if _is_seq_entry(content):
                break  # a sequence at a parent key's indentation ends this mapping
            kv = self.split_key(content)
            if kv is None:
                raise self.error(f"expected 'key: value', got {content.strip()!r}")
            key, rest = kv
            if key in out:
                raise self.error(f"duplicate key {key!r}")
            if rest == "" or rest.startswith("#"):
                self.i += 1
                self.skip_blank()
                if self.eof():
                    out[key] = None
                    break
                nxt = self.lines[self.i]
                ni = _indent_of(nxt)
                if ni > indent:
                    out[key] = self.node(ni)
                elif ni == indent and _is_seq_entry(nxt[ni:]):
                    out[key] = self.sequence(ni)
                else:
                    out[key] = None
            else:
                out[key] = self.scalar_value(rest, indent)
        return out

    def split_key(self, content):
        """(key, rest after the colon, stripped) when content is a mapping entry, else None."""
        if content[:1] in ("'", '"'):
            try:
                key, end = self.quoted(content, 0)
            except YamlError:
                return None
            after = content[end:]
            if after.startswith(":") and (len(after) == 1 or after[1] in " \t"):
                return key, after[1:].strip()
            return None
        m = _KEY_PLAIN.match(content)
        if not m:
            return None
        return m.group(1).strip(), content[m.end():].strip()

    def quoted(self, text, start):
        """Parses a quoted scalar starting at text[start]; returns (value, index after the quote)."""
        q = text[start]
        out = []
        i = start + 1
        while i < len(text):
            c = text[i]
            if q == "'" and c == "'":
                if text[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), i + 1
            if q == '"' and c == "\\":
                esc = text[i + 1:i + 2]
                table = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/", "0": "\0", " ": " "}
                if esc not in table:
                    raise self.error(f"unsupported escape \\{esc}")
                out.append(table[esc])
                i += 2
                continue
            if q == '"' and c == '"':
                return "".join(out), i + 1
            out.append(c)
            i += 1
        raise self.error("unterminated quoted scalar (multi-line quoted scalars are not supported)")

    def after_value(self, text, end):
        rest = text[end:].strip()
        if rest and not rest.startswith("#"):
            raise self.error(f"unexpected text after a value: {rest!r}")

    def scalar_value(self, text, parent_indent):
        """The value that starts with `text` on the current line; advances past every line it uses."""
        c = text[0]
        if c in "|>":
            return self.block_scalar(text, parent_indent)
        if c in "'\"":
            value, end = self.quoted(text, 0)
            self.after_value(text, end)
            self.i += 1
            return value
        if c in "[{":
            value = self.flow(text)
            self.i += 1
            return value
        if c in "&*!%@`":
            raise self.error(f"unsupported YAML construct {text!r} (anchors, aliases, tags)")
        value = re.split(r"\s#", text, maxsplit=1)[0].strip()
        if re.search(r":(\s|$)", value):
            raise self.error(f"a plain scalar may not contain ': ' ({value!r}); quote it")
        self.i += 1
        # A plain scalar continued on more-indented lines is valid YAML but not supported here.
        save = self.i
        self.skip_blank()
        if not self.eof():
            nxt = self.lines[self.i]
            ni = _indent_of(nxt)
            if ni > parent_indent and not _is_seq_entry(nxt[ni:]) and self.split_key(nxt[ni:]) is None:
                raise self.error("multi-line plain scalars are not supported; use a block scalar (|)")
        self.i = save
        return value

    def flow(self, text):
        stripped = re.split(r"\s#", text, maxsplit=1)[0].strip()
        if stripped in ("[]", "{}"):
            return [] if stripped == "[]" else {}
        if not (stripped.startswith("[") and stripped.endswith("]")):
            raise self.error(f"unsupported flow collection {stripped!r}")
        inner = stripped[1:-1]
        items = []
        i = 0
        while i < len(inner):
            while i < len(inner) and inner[i] == " ":
                i += 1
            if i >= len(inner):
                break
            if inner[i] in "'\"":
                value, i = self.quoted(inner, i)
            else:
                j = inner.find(",", i)
                j = len(inner) if j < 0 else j
                value = inner[i:j].strip()
                if not value or any(ch in value for ch in "[]{}:"):
                    raise self.error(f"unsupported flow sequence item {value!r}")
                i = j
            items.append(value)
            while i < len(inner) and inner[i] == " ":
                i += 1
            if i < len(inner):
                if inner[i] != ",":
                    raise self.error(f"expected ',' in {stripped!r}")
                i += 1
        return items

    def block_scalar(self, text, parent_indent):
        header = re.split(r"\s#", text, maxsplit=1)[0].strip()
        m = re.fullmatch(r"([|>])([+-]?)", header)
        if not m:
            raise self.error(f"unsupported block scalar header {header!r}")
        style, chomp = m.groups()
        self.i += 1
        raw = []
        block_indent = None
        while not self.eof():
            line = self.lines[self.i]
            if line.strip() == "":
                raw.append("")
                self.i += 1
                continue
            ind = _indent_of(line)
            if block_indent is None:
                if ind <= parent_indent:
                    break
                block_indent = ind
            if ind < block_indent:
                break
            raw.append(line[block_indent:])
            self.i += 1
        # Trailing blank lines belong to the chomping, not to the next node.
        trailing = 0
        while raw and raw[-1] == "":
            raw.pop()
            trailing += 1
        if style == "|":
            body = "\n".join(raw)
        else:
            body = ""
            for n, line in enumerate(raw):
                if line == "":
                    body += "\n"
                    continue
                if n > 0 and raw[n - 1] != "":
                    more_indented = line.startswith(" ") or raw[n - 1].startswith(" ")
                    body += "\n" if more_indented else " "
                body += line
        if chomp == "-" or not raw:
            return body
        if chomp == "+":
            return body + "\n" * (1 + trailing)
        return body + "\n"
