"""Results on disk and what is made from them: the store, tables, paired statistics, the HTML viewer."""
