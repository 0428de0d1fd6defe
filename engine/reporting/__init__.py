"""Where the history stands and how it is shown: the `status`, `backlog` and `live` objects read
from the database, and their renderings (`results` and `status_text` as text and Markdown,
`html_page`). Renderers import no pipeline: they take the objects they are given."""
