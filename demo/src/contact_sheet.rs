//! A self-contained HTML contact sheet: each row is a query image followed by its nearest
//! neighbours, with class names and scores, and wrong-class neighbours outlined in red.

use crate::fashion_png::CLASS_NAMES;
use crate::neighbours::{Precision, QueryResult};
use base64::Engine;
use dim_index::html_preview::escape;
use dim_vectors::retrieval::RetrievalScores;
use std::fmt::Write;
use std::path::Path;

/// What the page shows.
pub struct Sheet<'a> {
    /// Model file shown in the header.
    pub model: &'a Path,
    /// Exact-search scores of the model's vectors beside raw pixels', by name.
    pub comparison: &'a [(&'a str, &'a RetrievalScores)],
    /// Precision@k over all queries.
    pub precision: &'a Precision,
    /// The query rows to draw.
    pub queries: &'a [&'a QueryResult],
    /// Every row's image file.
    pub files: &'a [std::path::PathBuf],
    /// Every row's label.
    pub labels: &'a [usize],
}

fn image_tag(path: &Path, class: &str, caption: &str, style: &str) -> std::io::Result<String> {
    let data = base64::engine::general_purpose::STANDARD.encode(std::fs::read(path)?);
    Ok(format!(
        "<figure class=\"{style}\"><img src=\"data:image/png;base64,{data}\" alt=\"{}\" \
         title=\"{}\"><figcaption>{}<br>{}</figcaption></figure>",
        escape(class),
        escape(&path.display().to_string()),
        escape(class),
        escape(caption)
    ))
}

/// Renders the page.
pub fn render(sheet: &Sheet<'_>) -> std::io::Result<String> {
    let mut html = String::new();
    let p = sheet.precision;
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>dim-toolkit demo</title><style>\
         body{{font-family:sans-serif;margin:1.5em}} .row{{display:flex;gap:6px;margin:10px 0;align-items:flex-start}}\
         figure{{margin:0;text-align:center;font-size:11px;width:76px}} \
         img{{width:64px;height:64px;image-rendering:pixelated;border:3px solid #2a2}}\
         .query img{{border-color:#226}} .wrong img{{border-color:#d22}} .query{{margin-right:14px}}\
         table{{border-collapse:collapse}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}\
         </style></head><body><h1>dim-toolkit: nearest neighbours on Fashion-MNIST test images</h1>\
         <p>Model: <code>{}</code>. Each row: a query (blue) and its {} nearest other test images; \
         green = same class, red = another class.</p><p><b>Mean precision@{}</b> over all {} test \
         images as queries: <b>{:.4}</b></p><table><tr><th>class</th><th>precision@{}</th></tr>",
        escape(&sheet.model.display().to_string()),
        p.k,
        p.k,
        p.queries,
        p.mean,
        p.k
    );
    for (label, value) in p.per_class.iter().enumerate() {
        let _ = write!(html, "<tr><td>{}</td><td>{value:.4}</td></tr>", CLASS_NAMES[label]);
    }
    html.push_str(
        "</table><h2>What the model adds over raw pixels</h2><p>Exact search over the same queries \
         (cosine, every test image a query).</p><table><tr><th>features</th><th>precision@k</th>\
         <th>macro</th><th>k-NN accuracy</th></tr>",
    );
    for (name, scores) in sheet.comparison {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            escape(name),
            scores.precision_at_k_micro,
            scores.precision_at_k_macro,
            scores.knn_accuracy
        );
    }
    html.push_str("</table>");
    for query in sheet.queries {
        let label = sheet.labels[query.row];
        html.push_str("<div class=\"row\">");
        html.push_str(&image_tag(&sheet.files[query.row], CLASS_NAMES[label], "query", "query")?);
        for hit in &query.hits {
            let hit_label = sheet.labels[hit.row];
            let style = if hit_label == label { "same" } else { "wrong" };
            let caption = format!("#{} {:.3}", hit.rank, hit.score);
            html.push_str(&image_tag(&sheet.files[hit.row], CLASS_NAMES[hit_label], &caption, style)?);
        }
        html.push_str("</div>");
    }
    html.push_str("</body></html>\n");
    Ok(html)
}
