"""Indexes: the list of indexes with their skipped files, building a new one and refreshing one."""

from __future__ import annotations

from datetime import datetime

import gradio as gr

from retrieval.encoder_kinds import specs_help, suggestions
from retrieval.errors import LookalikeError
from retrieval.index_kinds import DEFAULT_INDEX_TYPE, INDEX_TYPES
from retrieval.runformat import META

from ..context import AppContext, Tab, human_bytes, user_errors
from ..scorecards import ScorecardView

ENCODER_SUGGESTIONS = tuple(suggestions())
COLUMNS = ["name", "images", "encoder", "type", "size", "updated", "skipped"]


def short_time(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        return datetime.fromisoformat(str(iso)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(iso)


def _on_progress(progress):
    return lambda done, total: progress((done, total), desc="embedding", unit="images")


class IndexesTab(Tab):
    title, id = "Indexes", "indexes"

    def __init__(self, ctx: AppContext):
        super().__init__(ctx)
        self.scorecard = ScorecardView(ctx, "indexes")

    def rows(self) -> list[list]:
        """One row per index (:data:`COLUMNS`); an index that cannot be read says why instead."""
        from retrieval.identity import describe_identity

        rows = []
        for m in self.ctx.ws.list():
            try:
                info = self.ctx.ws.store(m["name"]).info()
            except LookalikeError as exc:
                rows.append([m["name"], None, f"unreadable: {exc}", m.get("index_type", ""), "", "", None])
                continue
            skipped = info.get("skipped", 0)
            rows.append([info["name"], info.get("count", 0), describe_identity(info["encoder"]),
                         info.get("index_type", ""), human_bytes(info.get("size_bytes", 0)),
                         short_time(info.get("updated")), len(skipped) if isinstance(skipped, list) else skipped])
        return rows

    @user_errors
    def details(self, name: str | None):
        """Root, encoder and skipped files (with reasons) of one index."""
        if not name:
            return "", []
        name = self.ctx.require_index(name)
        store = self.ctx.ws.store(name)
        info = store.info()
        skipped = store.skipped()
        text = (f"**{name}** — {info.get('count', 0)} images from `{info['root']}`  \n"
                f"encoder `{info['encoder'].get('spec')}` · {info.get('index_type')} (`{info.get('factory', '')}`)"
                f" · dim {info.get('dim')} · updated {short_time(info.get('updated'))}  \n"
                + (f"{len(skipped)} file(s) skipped:" if skipped else "no skipped files"))
        return text, [[s.path, s.reason] for s in skipped]

    def select_row(self, rows, evt: gr.SelectData):
        """A click on a row shows that index's details and picks it for a refresh."""
        row = evt.row_value if getattr(evt, "row_value", None) else None
        if row is None and isinstance(evt.index, (list, tuple)) and rows is not None:
            try:
                row = list(rows.iloc[evt.index[0]]) if hasattr(rows, "iloc") else rows[evt.index[0]]
            except (IndexError, KeyError):
                row = None
        name = str(row[0]) if row else None
        text, skipped = self.details(name)
        return text, skipped, (name or gr.skip())

    def encoder_choices(self) -> list[str]:
        runs_dir = self.ctx.runs_dir
        runs = sorted(str(p.parent) for p in runs_dir.glob(f"*/{META}")) if runs_dir.is_dir() else []
        return list(dict.fromkeys([*ENCODER_SUGGESTIONS, *runs]))

    def encoder_dropdown(self, current: str | None = None):
        """Encoder suggestions, including training runs finished since the page was built."""
        return gr.Dropdown(choices=self.encoder_choices(), value=current or ENCODER_SUGGESTIONS[0])

    @user_errors
    def build(self, folder: str, encoder_spec: str, name: str, index_type: str = DEFAULT_INDEX_TYPE,
              overwrite: bool = False, progress=gr.Progress()):
        name, encoder_spec = (name or "").strip(), (encoder_spec or "").strip()
        folder = self.ctx.folders.check(folder, "index")  # under the roots allowed at launch, links resolved
        if not name:
            raise gr.Error("Give the new index a name (letters, digits, '.', '_' or '-').")
        if not encoder_spec:
            raise gr.Error(f"Choose an encoder: {specs_help(' or ')} (a training run directory).")
        progress(0, desc="loading encoder and scanning")
        report = self.ctx.ws.build(folder, encoder_spec, name,
                                   index_type=index_type or DEFAULT_INDEX_TYPE, overwrite=bool(overwrite),
                                   progress=False, on_progress=_on_progress(progress))
        msg = (f"Built **{report.name}**: {report.count} images ({report.images_per_s:.0f} images/s)"
               + (f", {len(report.skipped)} skipped" if report.skipped else "") + ".")
        gr.Info(f"Index {report.name} built: {report.count} images")
        if overwrite:
            self.ctx.sweep_thumbnails()
        return msg, self.rows()

    @user_errors
    def refresh(self, name: str | None, progress=gr.Progress()):
        name = self.ctx.require_index(name)
        progress(0, desc="scanning")
        report = self.ctx.ws.refresh(name, progress=False, on_progress=_on_progress(progress))
        msg = (f"Refreshed **{name}**: {report.count} images (+{report.added} −{report.removed})"
               + (f", {len(report.skipped)} skipped" if report.skipped else "") + ".")
        if report.removed:
            self.ctx.sweep_thumbnails()  # the thumbnails of removed or changed files go with them
        return msg, self.rows()

    def _allowed_note(self) -> str:
        roots = self.ctx.folders.roots
        return "" if roots is None else f", under {', '.join(map(str, roots)) or 'no allowed folder'}"

    def layout(self) -> None:
        names = self.ctx.index_names()
        self.table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="index-table",
                                  label="Indexes (click a row for its skipped files)")
        with gr.Row():
            self.reload = gr.Button("↻ Reload list", size="sm")
        self.details_text = gr.Markdown("")
        self.skipped = gr.Dataframe(headers=["path", "reason"], interactive=False, label="Skipped files",
                                    max_height=300)
        self.scorecard.layout()
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Build a new index**")
                offered = self.ctx.folders.offered(self.ctx.train_dirs)
                self.folder = gr.Textbox(label="Image folder (path on the server)" + self._allowed_note(),
                                         value=offered[0] if offered else "")
                self.encoder = gr.Dropdown(self.encoder_choices(), value=ENCODER_SUGGESTIONS[0],
                                           allow_custom_value=True, label="Encoder", info=specs_help())
                with gr.Row():
                    self.name = gr.Textbox(label="Index name")
                    self.index_type = gr.Dropdown(list(INDEX_TYPES), value=DEFAULT_INDEX_TYPE, label="Index type")
                self.overwrite = gr.Checkbox(False, label="Replace an existing index of that name")
                self.build_button = gr.Button("Build index", variant="primary")
                self.build_status = gr.Markdown("")
            with gr.Column():
                gr.Markdown("**Refresh an index** (embed new or changed files, drop deleted ones)")
                self.refresh_name = self.ctx.pickers.add(gr.Dropdown(
                    names, value=names[0] if names else None, label="Index", allow_custom_value=True))
                self.refresh_button = gr.Button("Refresh")
                self.refresh_status = gr.Markdown("")

    def wire(self, page: gr.Blocks) -> None:
        for event in (page.load, self.reload.click):
            event(self.rows, None, [self.table], api_visibility="private")
            event(self.encoder_dropdown, [self.encoder], [self.encoder], api_visibility="private")
        self.ctx.pickers.refresh_on(self.reload.click)
        self.table.select(self.select_row, [self.table], [self.details_text, self.skipped, self.refresh_name],
                          api_visibility="private")
        built = self.build_button.click(self.build, [self.folder, self.encoder, self.name, self.index_type,
                                                     self.overwrite], [self.build_status, self.table],
                                        api_visibility="private")
        self.ctx.pickers.refresh_on(built.success)
        self.refresh_button.click(self.refresh, [self.refresh_name], [self.refresh_status, self.table],
                                  api_visibility="private")
        self.scorecard.wire(page)
