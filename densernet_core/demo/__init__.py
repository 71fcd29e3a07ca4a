"""The built-in demo: a synthetic street, mapped once and revisited under other conditions."""
